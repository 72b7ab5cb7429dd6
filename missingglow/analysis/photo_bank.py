"""A bank of real photographs carrying known grey squares, for the grey-square counter.

    for image, truth, info in bank(seed=0):    # truth: [(top, left, K), ...]; info: a dict

The photographs are scikit-image's sample data (an optional extra): its data folder is found
without importing skimage, read with Pillow (faces from lfw_subset.npy by a small .npy reader), so
the bank needs neither skimage's code nor NumPy. `available()` says whether the folder is there.

Each image is a 64×64 crop of one photograph (random position, random scale from a 64-px patch
to the whole photo), in one of three looks: a colour photo, a natively grayscale one, or a colour
photo converted to grayscale. It gets 0–3 squares of one size K (8, 12, 16 or 20), filled with
exactly 128/255 as in a masked dataset. Each square is placed one of four ways: anywhere, on the
image border, next to the darkest content, or next to grey content (part of its outline on pixels
within 0.06 of grey). Rules that keep the truth well defined:
  - squares of one image never touch: at least GAP photo pixels lie between them (two touching
    grey squares are a grey rectangle to a person too);
  - every side of a square that is not on the image border has at least half of the pixels just
    outside it clearly off grey (> EDGE on some channel): a side lost in flat grey is no edge to a
    person either.
Square-free crops come from the same photos. `degraded()` gives the same images with what a
model's samples have (noise, a tint on the squares, blur, or all three), to be scored apart.
`faint()` gives crops of any size with faint squares (square_bank.blend): grey laid over at an
opacity, edges feathered.
"""

import ast
import importlib.util
import math
import os
import random
from functools import cache

import torch
from PIL import Image, ImageFilter

from ..data.images import from_pil
from ..data.masks import GREY
from ..render.images import to_pil
from .square_bank import FAINT_EDGE, FAINT_GAP, blend, iou, match, sides_visible

SIZE = 64
SQUARES = (8, 12, 16, 20)
GAP = 2
EDGE = 0.04
COLOUR = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)
GREYSCALE = (
    "camera.png",
    "coins.png",
    "moon.png",
    "page.png",
    "text.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "cell.png",
    "microaneurysms.png",
    "clock_motion.png",
    "lfw_subset.npy",
)
LOOKS = ("colour", "grey", "converted")
PLACES = ("anywhere", "border", "dark", "grey")
DEGRADATIONS = ("noise", "tint", "blur", "blur+noise+tint")


def folder():
    """scikit-image's data folder, or None when scikit-image is not installed."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "data")
    return path if os.path.isdir(path) else None


def available():
    path = folder()
    return path is not None and all(
        os.path.isfile(os.path.join(path, f)) for f in COLOUR + GREYSCALE
    )


def _npy(path):
    """A little-endian float64 C-order .npy array as a float tensor (what lfw_subset.npy is)."""
    with open(path, "rb") as f:
        data = f.read()
    major = data[6]
    length = int.from_bytes(data[8:10] if major == 1 else data[8:12], "little")
    start = (10 if major == 1 else 12) + length
    header = ast.literal_eval(data[start - length : start].decode("latin1"))
    if header["descr"] != "<f8" or header["fortran_order"]:
        raise ValueError(f"unexpected .npy layout in {path}: {header}")
    return torch.frombuffer(bytearray(data[start:]), dtype=torch.float64).view(header["shape"])


@cache
def photos():
    """{name: PIL image}: the colour photos in RGB, the grayscale ones in L; the 100 LFW faces
    (the first half of lfw_subset.npy) as lfw-0 … lfw-99."""
    path = folder()
    out = {}
    for name in COLOUR + GREYSCALE:
        if name.endswith(".npy"):
            faces = _npy(os.path.join(path, name))[:100]
            for i, face in enumerate(faces):
                pixels = (face.clamp(0, 1) * 255).round().to(torch.uint8)
                out[f"lfw-{i}"] = Image.frombytes(
                    "L", (pixels.shape[1], pixels.shape[0]), bytes(pixels.flatten().tolist())
                )
            continue
        with Image.open(os.path.join(path, name)) as img:
            out[name] = img.convert("RGB" if name in COLOUR else "L")
    return out


def crop(rng, photo, size=SIZE):
    """A size×size crop at a random place and scale (log-uniform from a size-pixel patch, or the
    smallest the photo allows, to its whole shorter side)."""
    w, h = photo.size
    short = min(w, h)
    lo = min(size, short)
    side = round(math.exp(rng.uniform(math.log(lo), math.log(short)))) if short > lo else short
    top, left = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
    patch = photo.crop((left, top, left + side, top + side))
    return from_pil(patch.resize((size, size), Image.LANCZOS if side > size else Image.BICUBIC))


def _ring(image, t, l, k):
    """The pixels (C, n) just outside box (t, l, k), within the image."""
    size = image.shape[-1]
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[max(t - 1, 0) : t + k + 1, max(l - 1, 0) : l + k + 1] = True
    inside[t : t + k, l : l + k] = False
    return image[:, inside]


def _apart(box, boxes, gap):
    t, l, k = box
    return all(
        t + k + gap <= bt or bt + bk + gap <= t or l + k + gap <= bl or bl + bk + gap <= l
        for bt, bl, bk in boxes
    )


def place(rng, image, k, count, tries=60, gap=GAP, edge=EDGE):
    """`count` boxes of side k on `image`, each placed one of PLACES ways, or None if they do not
    fit the rules (`gap` pixels apart, sides visible at `edge`). Returns [(top, left, k)] and the
    ways."""
    size = image.shape[-1]
    span = size - k
    boxes, ways = [], []
    for _ in range(count):
        way = rng.choice(PLACES)
        options = []
        for _ in range(tries):
            if way == "border":
                t, l = rng.randrange(span + 1), rng.choice((0, span))
                t, l = (t, l) if rng.random() < 0.5 else (l, t)
                if rng.random() < 0.3:  # a corner
                    t = rng.choice((0, span))
            else:
                t, l = rng.randrange(span + 1), rng.randrange(span + 1)
            box = (t, l, k)
            if _apart(box, boxes, gap) and sides_visible(image, box, edge):
                options.append(box)
            if way in ("anywhere", "border") and options:
                break
        if not options:
            return None
        if way == "dark":
            box = min(options, key=lambda b: _ring(image, *b).mean().item())
        elif way == "grey":

            def near_grey(b):
                return ((_ring(image, *b) - GREY).abs().amax(0) <= 0.06).float().mean().item()

            box = max(options, key=near_grey)
        else:
            box = options[0]
        boxes.append(box)
        ways.append(way)
    return boxes, ways


def paste(image, boxes, fill=None):
    out = image.clone()
    for t, l, k in boxes:
        out[:, t : t + k, l : l + k] = GREY if fill is None else fill
    return out


def _pick(rng, look):
    """A photo of the look: grayscale photos with the LFW faces as one photo among the others."""
    if look == "grey":
        choice = rng.choice(GREYSCALE)
        return f"lfw-{rng.randrange(100)}" if choice == "lfw_subset.npy" else choice
    return rng.choice(COLOUR)


def bank(seed=0, per_cell=2, free=None):
    """Exact-grey images: per look × square size × count 1–3, `per_cell` images, and `free`
    square-free crops (default: as many as there are images with a given count). Yields
    (image, truth boxes, info) with info: photo, look, K (the size to search for), count, ways."""
    if not available():
        raise RuntimeError("scikit-image's data folder is not installed")
    rng = random.Random(seed)
    images = photos()
    cells = [(look, k, n) for look in LOOKS for k in SQUARES for n in (1, 2, 3)]
    free = len(LOOKS) * len(SQUARES) * per_cell if free is None else free
    jobs = [c for c in cells for _ in range(per_cell)]
    jobs += [
        (LOOKS[i % len(LOOKS)], SQUARES[i // len(LOOKS) % len(SQUARES)], 0) for i in range(free)
    ]
    for look, k, n in jobs:
        while True:
            name = _pick(rng, look)
            photo = images[name]
            if look == "converted":
                photo = photo.convert("L")
            base = crop(rng, photo)
            placed = place(rng, base, k, n)
            if placed is not None:
                break
        boxes, ways = placed
        info = {"photo": name, "look": look, "K": k, "count": n, "ways": ways}
        yield paste(base, boxes), boxes, info


def degrade(image, boxes, how, rng, grey):
    """What a model's samples have: Gaussian noise (0.03), a tint on the squares (±0.06 per
    channel; the same on all three in a grayscale image), a Gaussian blur (radius 0.7). Noise on a
    grayscale image is the same on its three channels."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    out = image.clone()
    if "tint" in how:
        for t, l, k in boxes:
            shift = (torch.rand(1 if grey else 3, 1, 1, generator=g) - 0.5) * 0.12
            out[:, t : t + k, l : l + k] = GREY + shift.expand(3, 1, 1)
    if "blur" in how:
        out = from_pil(to_pil(out).filter(ImageFilter.GaussianBlur(0.7)))
    if "noise" in how:
        noise = 0.03 * torch.randn(1 if grey else 3, *out.shape[1:], generator=g)
        out = out + noise.expand_as(out)
    return out.clamp(0, 1)


def degraded(seed=0, per_cell=2, free=None, images=None):
    """The images of bank(seed, …), each with one degradation (in turn): info gains 'degradation'.
    Quantised to 8 bits, as a saved sample would be. `images`: that bank, if already built."""
    rng = random.Random(seed + 10**6)
    for i, (image, boxes, info) in enumerate(images or bank(seed, per_cell, free)):
        how = DEGRADATIONS[i % len(DEGRADATIONS)]
        out = degrade(image, boxes, how, rng, info["look"] != "colour")
        yield (out * 255).round() / 255, boxes, {**info, "degradation": how}


def faint_crops(seed=0, size=SIZE, square=12, images=48, free=0):
    """The pictures and boxes of faint(): crops of `size` px with 1–3 boxes of side `square`, the
    looks in turn, then `free` crops with none, as (crop, truth boxes, info). Each box is placed
    as in bank(), with its sides visible at the faintest opacity measured (FAINT_EDGE) and
    FAINT_GAP between boxes."""
    if not available():
        raise RuntimeError("scikit-image's data folder is not installed")
    rng = random.Random(seed)
    pictures = photos()
    out = []
    for index in range(images + free):
        look = LOOKS[index % len(LOOKS)]
        count = 1 + index // len(LOOKS) % 3 if index < images else 0
        while True:
            name = _pick(rng, look)
            photo = pictures[name].convert("L") if look == "converted" else pictures[name]
            base = crop(rng, photo, size)
            placed = place(rng, base, square, count, gap=FAINT_GAP, edge=FAINT_EDGE)
            if placed is not None:
                break
        boxes, ways = placed
        out.append(
            (base, boxes, {"photo": name, "look": look, "K": square, "count": count, "ways": ways})
        )
    return out


def faint(seed=0, opacity=1.0, feather=0, size=SIZE, square=12, images=48, free=0):
    """Photographs with faint squares: faint_crops(seed, size, square, images, free) with grey
    blended over each box (square_bank.blend: at `opacity`, edges feathered by `feather` px).
    Yields (image, truth boxes, info). The crops and the boxes do not depend on opacity or
    feather, so every setting scores the same squares."""
    for base, boxes, info in faint_crops(seed, size, square, images, free):
        yield (
            blend(base, boxes, opacity, feather),
            boxes,
            {**info, "opacity": opacity, "feather": feather},
        )


def score(detect_fn, images):
    """Scores of detect_fn(image, K) -> squares over (image, truth, info) triples: exact-count
    accuracy (all, per look, per K, per degradation), under/over counts, false squares on
    square-free images, squares found per way placed, precision and recall. Returns a dict."""

    rows, ways = [], {w: [0, 0] for w in PLACES}
    for image, boxes, info in images:
        found = detect_fn(image, info["K"])
        tp, fp, fn = match(found, boxes)
        rows.append((info, len(boxes), len(found), tp, fp, fn))
        for box, way in zip(boxes, info["ways"], strict=True):
            ways[way][0] += any(iou(f.box(), box) >= 0.5 for f in found)
            ways[way][1] += 1

    def exact(sel):
        sel = list(sel)
        return (sum(r[1] == r[2] for r in sel), len(sel))

    with_squares = [r for r in rows if r[1]]
    free = [r for r in rows if not r[1]]
    tp, fp, fn = (sum(r[i] for r in rows) for i in (3, 4, 5))
    return {
        "images": len(rows),
        "exact": exact(rows),
        "under": sum(r[2] < r[1] for r in rows),
        "over": sum(r[2] > r[1] for r in rows),
        "with_squares": exact(with_squares),
        "free_fired": (sum(r[2] > 0 for r in free), len(free)),
        "by_look": {look: exact(r for r in rows if r[0]["look"] == look) for look in LOOKS},
        "by_K": {k: exact(r for r in rows if r[0]["K"] == k) for k in SQUARES},
        "by_degradation": {
            d: exact(r for r in rows if r[0].get("degradation") == d)
            for d in DEGRADATIONS
            if any(r[0].get("degradation") == d for r in rows)
        },
        "found_by_way": {w: tuple(v) for w, v in ways.items()},
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "misses": [(r[0], r[1], r[2]) for r in rows if r[1] != r[2]],
    }
