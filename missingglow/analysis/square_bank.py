"""A bank of synthetic images for measuring the grey-square detector: known squares on varied
pictures, and natural grey content that holds no square. Deterministic from a seed; torch and
Pillow only.

    for image, truth, kind in bank(seed=0, size=64, square=12):   # truth: [(top, left, K), ...]

Pictures: synthetic faces, colour gradients, sinusoid textures, pixel noise, smooth random fields,
and 'scenes' of random shapes. Degradations (applied to the whole picture, squares included, as a
model's samples have them): blur, Gaussian noise, a tint on the square, 5-bit quantisation.
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
    g = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    if kind == "face":
        return from_pil(draw_face(rng.randrange(1000), index, size))
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    if kind == "gradient":
        corners = torch.rand(4, 3, 1, 1, generator=g)
        return (corners[0] * (1 - ys) * (1 - xs) + corners[1] * (1 - ys) * xs
                + corners[2] * ys * (1 - xs) + corners[3] * ys * xs)
    if kind == "texture":
        out = torch.zeros(3, size, size) + 0.5
        for _ in range(4):
            f, phase = rng.uniform(2, 12), rng.uniform(0, 6.3)
            angle = rng.uniform(0, math.pi)
            wave = torch.sin(2 * math.pi * f * (xs * math.cos(angle) + ys * math.sin(angle))
                             + phase)
            out = out + 0.15 * wave * torch.rand(3, 1, 1, generator=g)
        return out.clamp(0, 1)
    if kind == "noise":
        return torch.rand(3, size, size, generator=g)
    if kind == "smooth":
        low = torch.rand(1, 3, 5, 5, generator=g)
        return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic",
                                               align_corners=True)[0].clamp(0, 1)
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
        if all(t + square + gap <= bt or bt + square + gap <= t or l + square + gap <= bl
               or bl + square + gap <= l for bt, bl, _ in boxes):
            boxes.append((t, l, square))
    return boxes


def degrade(image, boxes, how, rng):
    g = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    out = image.clone()
    for t, l, k in boxes:
        fill = torch.full((3, 1, 1), GREY)
        if "tint" in how:
            fill = fill + (torch.rand(3, 1, 1, generator=g) - 0.5) * 0.12
        out[:, t:t + k, l:l + k] = fill
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
        head = (((yy - size * 0.55) / (size * 0.45)) ** 2
                + ((xx - size * 0.5) / (size * 0.3)) ** 2 < 1)
        out.append((torch.where(head, face, bg), "face on a grey background"))
        rect = face.clone()
        t, l = rng.randrange(size - k), rng.randrange(size - 2 * k)
        rect[:, t:t + k, l:l + 2 * k] = GREY
        out.append((rect, f"grey {k}×{2 * k} rectangle on a face"))
        band = face.clone()
        band[:, rng.randrange(size - k):][:, :k] = GREY
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
        blotch = GREY + 0.04 * torch.nn.functional.interpolate(
            torch.randn(1, 3, 8, 8, generator=g), size=(size, size), mode="bilinear")[0]
        out.append((blotch.clamp(0, 1), "blotchy grey texture"))
        big = face.clone()
        big[:, 2:2 + 3 * k, 2:2 + 3 * k] = GREY
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
        "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
        "count_accuracy": exact / total, "images": total, "tp": tp, "fp": fp, "fn": fn,
        "by_kind": {k: (v[0] / max(v[0] + v[1], 1), v[0] / max(v[0] + v[2], 1))
                    for k, v in by_kind.items()},
        "grey_images": len(grey), "false_on_grey": false_on_grey, "misses": misses,
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
