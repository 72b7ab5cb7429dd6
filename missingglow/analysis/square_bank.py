"""A bank of synthetic images for measuring the grey-square detector: known squares on varied
pictures, and natural grey content that holds no square. Deterministic from a seed; torch and
Pillow only.

    for image, truth, kind in bank(seed=0, size=64, square=12):   # truth: [(top, left, K), ...]

Pictures: synthetic faces, colour gradients, sinusoid textures, pixel noise, smooth random fields,
and 'scenes' of random shapes. Degradations (applied to the whole picture, squares included, as a
model's samples have them): blur, Gaussian noise, a tint on the square, 5-bit quantisation.

Faint squares, as a model's samples mostly hold them: grey laid over a face at an opacity, edges
feathered (blend), the same faces and boxes at every setting so that settings compare square by
square:

    for image, truth, info in faint(seed=0, opacity=0.7, feather=2, size=64, square=20):
"""

import math
import random

import torch
from PIL import Image, ImageDraw, ImageFilter

from ..data.images import from_pil
from ..data.masks import GREY
from ..data.synthetic import draw_face
from ..render.images import to_pil

PICTURES = ("face", "gradient", "texture", "noise", "smooth", "scene")
DEGRADATIONS = ("none", "blur", "noise", "tint", "quantize", "blur+noise+tint")


def picture(kind, rng, size, index):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    if kind == "face":
        return from_pil(draw_face(rng.randrange(1000), index, size))
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    if kind == "gradient":
        corners = torch.rand(4, 3, 1, 1, generator=g)
        return (
            corners[0] * (1 - ys) * (1 - xs)
            + corners[1] * (1 - ys) * xs
            + corners[2] * ys * (1 - xs)
            + corners[3] * ys * xs
        )
    if kind == "texture":
        out = torch.zeros(3, size, size) + 0.5
        for _ in range(4):
            f, phase = rng.uniform(2, 12), rng.uniform(0, 6.3)
            angle = rng.uniform(0, math.pi)
            wave = torch.sin(
                2 * math.pi * f * (xs * math.cos(angle) + ys * math.sin(angle)) + phase
            )
            out = out + 0.15 * wave * torch.rand(3, 1, 1, generator=g)
        return out.clamp(0, 1)
    if kind == "noise":
        return torch.rand(3, size, size, generator=g)
    if kind == "smooth":
        low = torch.rand(1, 3, 5, 5, generator=g)
        return torch.nn.functional.interpolate(
            low, size=(size, size), mode="bicubic", align_corners=True
        )[0].clamp(0, 1)
    if kind == "scene":
        img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randrange(4, 10)):
            x0, y0 = rng.randrange(size), rng.randrange(size)
            x1, y1 = x0 + rng.randrange(4, size // 2), y0 + rng.randrange(4, size // 2)
            colour = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        return from_pil(img)
    raise ValueError(kind)


def place(rng, size, square, count, gap=2, tries=200):
    """`count` non-overlapping K×K boxes at least `gap` pixels apart."""
    boxes = []
    for _ in range(tries):
        if len(boxes) == count:
            break
        t, l = rng.randrange(size - square + 1), rng.randrange(size - square + 1)
        if all(
            t + square + gap <= bt
            or bt + square + gap <= t
            or l + square + gap <= bl
            or bl + square + gap <= l
            for bt, bl, _ in boxes
        ):
            boxes.append((t, l, square))
    return boxes


def degrade(image, boxes, how, rng):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    out = image.clone()
    for t, l, k in boxes:
        fill = torch.full((3, 1, 1), GREY)
        if "tint" in how:
            fill = fill + (torch.rand(3, 1, 1, generator=g) - 0.5) * 0.12
        out[:, t : t + k, l : l + k] = fill
    if "blur" in how:
        out = from_pil(to_pil(out).filter(ImageFilter.GaussianBlur(0.7)))
    if "noise" in how:
        out = out + 0.03 * torch.randn(out.shape, generator=g)
    if how == "quantize":
        out = torch.floor(out.clamp(0, 1) * 255 / 8) / 32 + 1 / 64
    return out.clamp(0, 1)


def bank(seed=0, size=64, square=12, per_cell=2):
    """Images with 0–3 known squares: every picture kind × degradation × count, `per_cell` each."""
    rng = random.Random(seed)
    index = 0
    for kind in PICTURES:
        for how in DEGRADATIONS:
            for count in range(4):
                for _ in range(per_cell):
                    index += 1
                    base = picture(kind, rng, size, index)
                    boxes = place(rng, size, square, count)
                    yield degrade(base, boxes, how, rng), boxes, f"{kind}/{how}/{count}"


def grey_content(seed=0, size=64, square=12):
    """Natural grey content that is not a K×K square: (image, description) pairs."""
    rng = random.Random(seed)
    k = square
    out = []
    for i in range(3):
        face = picture("face", rng, size, 1000 + i)
        g = torch.Generator().manual_seed(i)
        # a grey background: everything outside the face's own colours becomes grey
        bg = torch.full_like(face, GREY)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        head = ((yy - size * 0.55) / (size * 0.45)) ** 2 + (
            (xx - size * 0.5) / (size * 0.3)
        ) ** 2 < 1
        out.append((torch.where(head, face, bg), "face on a grey background"))
        rect = face.clone()
        t, l = rng.randrange(size - k), rng.randrange(size - 2 * k)
        rect[:, t : t + k, l : l + 2 * k] = GREY
        out.append((rect, f"grey {k}×{2 * k} rectangle on a face"))
        band = face.clone()
        band[:, rng.randrange(size - k) :][:, :k] = GREY
        out.append((band, f"grey band {k} px high across the image"))
        disc = face.clone()
        r = 0.75 * k
        cy, cx = rng.uniform(r, size - r), rng.uniform(r, size - r)
        disc[:, ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] = GREY
        out.append((disc, f"grey disc of diameter {2 * r:.0f}"))
        ramp = GREY + 0.25 * (xx / size - 0.5) + 0.02 * torch.randn((size, size), generator=g)
        out.append((ramp.expand(3, size, size).clamp(0, 1), "grey ramp with noise"))
        half = face.clone()
        half[:, :, : size // 2] = GREY + 0.02 * torch.randn((3, size, size // 2), generator=g)
        out.append((half.clamp(0, 1), "left half noisy grey"))
        blotch = (
            GREY
            + 0.04
            * torch.nn.functional.interpolate(
                torch.randn(1, 3, 8, 8, generator=g), size=(size, size), mode="bilinear"
            )[0]
        )
        out.append((blotch.clamp(0, 1), "blotchy grey texture"))
        big = face.clone()
        big[:, 2 : 2 + 3 * k, 2 : 2 + 3 * k] = GREY
        out.append((big, f"grey {3 * k}×{3 * k} square (not K×K)"))
    return out


def score(detect_fn, seed=0, size=64, square=12, per_cell=2):
    """Precision, recall and exact-count accuracy of detect_fn(image) -> squares on the bank, plus
    false detections on the grey content. Returns a dict (also per picture kind)."""

    tp = fp = fn = exact = total = 0
    by_kind = {}
    misses = []
    for image, boxes, label in bank(seed, size, square, per_cell):
        found = detect_fn(image)
        a, b, c = match(found, boxes)
        tp, fp, fn = tp + a, fp + b, fn + c
        exact += len(found) == len(boxes)
        total += 1
        kind = label.split("/")[0]
        k = by_kind.setdefault(kind, [0, 0, 0])
        k[0], k[1], k[2] = k[0] + a, k[1] + b, k[2] + c
        if b or c:
            misses.append((label, len(boxes), len(found)))
    grey = grey_content(seed, size, square)
    false_on_grey = [(desc, len(detect_fn(img))) for img, desc in grey if detect_fn(img)]
    return {
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "count_accuracy": exact / total,
        "images": total,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "by_kind": {
            k: (v[0] / max(v[0] + v[1], 1), v[0] / max(v[0] + v[2], 1)) for k, v in by_kind.items()
        },
        "grey_images": len(grey),
        "false_on_grey": false_on_grey,
        "misses": misses,
    }


# --- scoring: detected boxes against the true ones ----------------------------------------------


def match(found, truth, min_iou=0.5):
    """Greedy one-to-one matching of detected boxes to true (top, left, size) boxes by IoU.

    Returns (true positives, false positives, false negatives)."""
    unmatched = list(truth)
    tp = 0
    for square in found:
        box = square.box() if hasattr(square, "box") else tuple(square)
        best = max(unmatched, key=lambda t: iou(box, t), default=None)
        if best is not None and iou(box, best) >= min_iou:
            unmatched.remove(best)
            tp += 1
    return tp, len(found) - tp, len(unmatched)


def iou(a, b):
    """Intersection over union of two (top, left, K) squares."""
    (ta, la, ka), (tb, lb, kb) = a, b
    h = max(min(ta + ka, tb + kb) - max(ta, tb), 0)
    w = max(min(la + ka, lb + kb) - max(la, lb), 0)
    inter = h * w
    return inter / (ka * ka + kb * kb - inter)


# --- faint squares: grey blended over the picture, edges feathered ------------------------------

OPACITIES = (0.3, 0.5, 0.7, 0.85, 1.0)
FEATHERS = (0, 1, 2)
VISIBLE_STEP = 0.04  # a step this large (on some channel) is clearly visible


def feather_profile(start, square, feather, size):
    """Alpha (size,) along one axis of a square over [start, start + square): 1 inside and 0
    outside, and with a feather f > 0 a linear ramp across the 2f pixels centred on each edge,
    (j + 0.5) / 2f for j = 0 … 2f − 1. The half-way line stays on the box's edge, so the box is
    where a person sees the square, and for square >= 2f the profile still sums to `square`."""
    centre = torch.arange(size, dtype=torch.float64) + 0.5
    if feather == 0:
        return ((centre > start) & (centre < start + square)).double()
    up = ((centre - start) / (2 * feather) + 0.5).clamp(0, 1)
    down = ((start + square - centre) / (2 * feather) + 0.5).clamp(0, 1)
    return torch.minimum(up, down)


def blend(image, boxes, opacity, feather):
    """The picture with grey laid over each (top, left, K) box at `opacity`, edges feathered:
    (1 − α)·image + α·grey, α = opacity × the box's row profile × its column profile. At opacity 1
    and feather 0 that is the exact grey square."""
    size = image.shape[-1]
    alpha = torch.zeros(size, size, dtype=torch.float64)
    for t, l, k in boxes:
        box = feather_profile(t, k, feather, size)[:, None] * feather_profile(l, k, feather, size)
        alpha = torch.maximum(alpha, opacity * box)
    alpha = alpha.to(image.dtype)
    return (1 - alpha) * image + alpha * GREY


def sides_visible(image, box, edge):
    """Whether each side of box (top, left, K) off the image border has at least half of the
    pixels just outside it off grey by more than `edge` on some channel: a side lost in grey is no
    edge to a person either."""
    t, l, k = box
    size = image.shape[-1]
    off = (image - GREY).abs().amax(0) > edge  # (S, S)
    strips = []
    if t > 0:
        strips.append(off[t - 1, l : l + k])
    if t + k < size:
        strips.append(off[t + k, l : l + k])
    if l > 0:
        strips.append(off[t : t + k, l - 1])
    if l + k < size:
        strips.append(off[t : t + k, l + k])
    return all(s.float().mean().item() >= 0.5 for s in strips)


# a faint square's step across a side is its opacity times the outside's distance from grey, so
# its sides must be this far off grey to show at the faintest opacity measured
FAINT_EDGE = VISIBLE_STEP / min(OPACITIES)


def faint_visible(image, box):
    return sides_visible(image, box, FAINT_EDGE)


FAINT_GAP = 2 + 2 * max(FEATHERS)  # squares' feathered borders neither touch nor overlap


def faint_faces(seed=0, size=64, square=12, images=48, free=0):
    """The pictures and boxes of faint(): synthetic faces with 1–3 boxes of side `square` (in
    turn), then `free` faces with none, as (face, truth boxes, info). Every box is visible at the
    faintest of OPACITIES (faint_visible) and FAINT_GAP from the others; a face with no room for
    all of its boxes gets fewer."""
    rng = random.Random(seed)
    out = []
    for index in range(images + free):
        count = 1 + index % 3 if index < images else 0
        base = picture("face", rng, size, index)
        boxes = []
        for _ in range(200):
            if len(boxes) == count:
                break
            box = place(rng, size, square, 1)[0]
            if faint_visible(base, box) and all(_apart(box, b, FAINT_GAP) for b in boxes):
                boxes.append(box)
        out.append((base, boxes, {"picture": "face", "count": len(boxes)}))
    return out


def faint(seed=0, opacity=1.0, feather=0, size=64, square=12, images=48, free=0):
    """Synthetic faces with faint squares: faint_faces(seed, size, square, images, free) with grey
    blended over each box (blend). Yields (image, truth boxes, info). The faces and the boxes do
    not depend on opacity or feather, so every setting scores the same squares."""
    for base, boxes, info in faint_faces(seed, size, square, images, free):
        yield (
            blend(base, boxes, opacity, feather),
            boxes,
            {**info, "opacity": opacity, "feather": feather},
        )


def _apart(a, b, gap):
    (ta, la, ka), (tb, lb, kb) = a, b
    return ta + ka + gap <= tb or tb + kb + gap <= ta or la + ka + gap <= lb or lb + kb + gap <= la


def faint_score(find, images, batch=32):
    """How many faint squares `find(batch) -> [squares per image]` finds in (image, truth, info)
    triples: found and missed squares and the recall, the detections that match no square on
    images with squares (extra), and square-free images with any detection (free_fired)."""
    found = missed = extra = fired = free = 0
    images = list(images)
    for start in range(0, len(images), batch):
        part = images[start : start + batch]
        for squares, (_, boxes, _) in zip(
            find(torch.stack([p[0] for p in part])), part, strict=True
        ):
            tp, fp, fn = match(squares, boxes)
            found, missed = found + tp, missed + fn
            if boxes:
                extra += fp
            else:
                free += 1
                fired += bool(squares)
    return {
        "squares": found + missed,
        "found": found,
        "missed": missed,
        "recall": found / max(found + missed, 1),
        "extra": extra,
        "free_fired": (fired, free),
    }


def faint_scores(find, bases, opacities=OPACITIES, feathers=FEATHERS):
    """faint_score for every opacity × feather, on the same (picture, boxes, info) triples (from
    faint_faces or photo_bank.faint_crops): {(opacity, feather): score}. Square-free pictures are
    the same at every setting, so they are scored once, in the key (None, None)."""
    bases = list(bases)
    scores = {(None, None): faint_score(find, [b for b in bases if not b[1]])}
    with_squares = [b for b in bases if b[1]]
    for opacity in opacities:
        for feather in feathers:
            scores[opacity, feather] = faint_score(
                find,
                [
                    (blend(image, boxes, opacity, feather), boxes, info)
                    for image, boxes, info in with_squares
                ],
            )
    return scores
