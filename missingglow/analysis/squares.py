"""The grey-square detector: finds K×K patches of (near-)uniform grey and counts them.

A window (top, left, k) is a square when
  1. its interior is near grey: every channel's mean within `tint` of 128/255 (a model's squares
     come out slightly tinted),
  2. its interior is uniform: the pooled standard deviation over the three channels is at most
     `spread` (a model's squares carry noise),
  3. it has a boundary on every side that lies inside the image: the one-pixel strip just outside
     the side differs from the interior colour by an RMS of at least `contrast` (and at least
     `edge_ratio` times the interior's own spread), in each third of the strip separately (so a
     boundary that is grey in places, as where a curved grey region meets the window, is no
     boundary). A side on the image border counts as a boundary.

Rule 3 is what tells a square from natural grey content: a grey background, a grey shirt or a grey
gradient larger than the window has grey on at least one side of every window inside it, and a
grey rectangle that is not square fails on its long sides. Windows of k >= 8 ignore a one-pixel
band on either side of their claimed edge (the interior shrinks by one pixel, the strip moves out
by one), so blurred edges neither spoil the uniformity nor hide the boundary.

All windows of all candidate sizes are scored at once with integral images (torch, no NumPy). The
accepted windows around one square (a few sizes and one-pixel shifts) form a cluster: clusters are
formed greedily from the best-scoring window (score: boundary contrast over interior spread), any
window overlapping the cluster's seed by more than half of the smaller one joins it, and the
reported box is the median of the cluster's edges. So two squares that overlap by more than half
count as one (a person counting would hesitate too); squares that touch or overlap less count as
two.
"""
from dataclasses import dataclass

import torch

from ..data.masks import GREY


@dataclass(frozen=True)
class Settings:
    tint: float = 0.10       # max |channel mean − grey| inside
    spread: float = 0.05     # max pooled std inside
    contrast: float = 0.04   # min RMS difference of each outside strip from the inside colour
    edge_ratio: float = 2.0  # ... and at least this many times the inside std
    parts: int = 3           # each strip is checked in this many pieces (fewer on small windows)
    margin_from: int = 8     # windows this size and larger ignore a 1-px band around their edge
    overlap: float = 0.5     # windows overlapping a cluster's seed by more than this join it
    # the second pass, for a model's ragged squares: blobs of grey-looking pixels
    blob_tint: float = 0.10  # a pixel looks grey when every channel is this close to grey
    blob_fill: float = 0.6   # min share of its bounding box a blob covers
    blob_ring: float = 0.15  # min mean distance from grey of the pixels around the blob
    blob_spread: float = 0.08  # max pooled std of the blob's pixels


DEFAULT = Settings()


@dataclass(frozen=True)
class Square:
    top: int
    left: int
    size: int
    score: float

    def box(self):
        return self.top, self.left, self.size


def candidate_sizes(square, image_size, spread=None, minimum=3):
    """Sizes to search around a trained square size K: K−spread … K+spread (within [minimum, S]);
    spread defaults to about K/6 (at least 1): a model's squares vary a little in size."""
    if spread is None:
        spread = max(1, round(square / 6))
    return [k for k in range(square - spread, square + spread + 1) if minimum <= k <= image_size]


def all_sizes(image_size, minimum=4):
    """Every size from `minimum` to half the image: for images whose square size is unknown."""
    return list(range(minimum, max(minimum, image_size // 2) + 1))


def _integral(x):
    """(N, C, S, S) → (N, C, S+1, S+1) with a zero first row and column."""
    out = torch.zeros(x.shape[0], x.shape[1], x.shape[2] + 1, x.shape[3] + 1, dtype=torch.float64)
    out[:, :, 1:, 1:] = x.double().cumsum(2).cumsum(3)
    return out


def _rect(ii, top, left, h, w):
    """Sums over rectangles [top, top+h) × [left, left+w) for index tensors top, left: (N, C, P)."""
    flat, row = ii.flatten(2), ii.shape[-1]
    a, b = top * row, (top + h) * row
    return flat[:, :, b + left + w] - flat[:, :, a + left + w] - flat[:, :, b + left] \
        + flat[:, :, a + left]


class _single_thread:
    """The detector's many small tensor ops run far slower split over threads on a busy machine."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


class _Tables:
    """Integral images of one batch: the pixels, their squares, and products of pixels `d` rows
    (or columns) apart, so that any rectangle's sums, and any two parallel lines' squared
    difference, cost four look-ups."""

    def __init__(self, images):
        x = images.double()
        self.size = x.shape[-1]
        self.ii1, self.ii2 = _integral(x), _integral(x ** 2)
        self.sq = _integral((x ** 2).sum(1, keepdim=True))
        self.vertical, self.horizontal = {}, {}
        for d in (1, 3):
            if d < self.size:
                v = torch.zeros_like(x[:, :1])
                v[..., :-d, :] = (x[..., :-d, :] * x[..., d:, :]).sum(1, keepdim=True)
                h = torch.zeros_like(x[:, :1])
                h[..., :, :-d] = (x[..., :, :-d] * x[..., :, d:]).sum(1, keepdim=True)
                self.vertical[d], self.horizontal[d] = _integral(v), _integral(h)

    def step(self, a_top, a_left, b_top, b_left, h, w, products):
        """Mean over channels and pixels of (line a − line b)², a before b, `products` the table
        for their distance: (N, P)."""
        sa, sb = _rect(self.sq, a_top, a_left, h, w), _rect(self.sq, b_top, b_left, h, w)
        ab = _rect(products, a_top, a_left, h, w)
        return ((sa + sb - 2 * ab)[:, 0] / (3 * h * w)).clamp_min(0)


def _windows(tables, k, settings):
    """Accepted windows of side k: (image index, top, left, score) tensors."""
    size = tables.size
    m = 1 if k >= settings.margin_from else 0
    inner, d = k - 2 * m, 1 + 2 * m
    span = torch.arange(size - k + 1)
    top = span.repeat_interleave(len(span))
    left = span.repeat(len(span))
    area = inner * inner
    s1 = _rect(tables.ii1, top + m, left + m, inner, inner)
    s2 = _rect(tables.ii2, top + m, left + m, inner, inner)
    mean = s1 / area                                                   # (N, 3, P)
    std = (s2 / area - mean ** 2).clamp_min(0).mean(1).sqrt()          # (N, P)
    grey = (mean - GREY).abs().amax(1) <= settings.tint
    uniform = std <= settings.spread
    need = torch.maximum(torch.full_like(std, settings.contrast), settings.edge_ratio * std)
    weakest = torch.full_like(std, float("inf"))
    v, h = tables.vertical.get(d), tables.horizontal.get(d)
    # each side: the step from the interior's outer line to the line just outside (d apart),
    # checked piece by piece along the side
    parts = max(1, min(settings.parts, inner // 2))
    cuts = [round(inner * p / parts) for p in range(parts + 1)]
    far = size - 1
    for a, b in zip(cuts, cuts[1:]):
        n = b - a
        along_l, along_t = left + m + a, top + m + a
        edges = [  # (outside line exists, first line top/left, second line top/left, h, w, table)
            (top - 1 - m >= 0, (top - 1 - m).clamp(0, far), along_l, (top + m), along_l, 1, n, v),
            (top + k + m <= far, top + k - 1 - m, along_l, (top + k + m).clamp(0, far), along_l,
             1, n, v),
            (left - 1 - m >= 0, along_t, (left - 1 - m).clamp(0, far), along_t, left + m, n, 1, h),
            (left + k + m <= far, along_t, left + k - 1 - m, along_t, (left + k + m).clamp(0, far),
             n, 1, h),
        ]
        for inside, at, al, bt, bl, hh, ww, table in edges:
            if table is None:
                continue
            at_c, al_c = at.clamp(0, size - hh), al.clamp(0, size - ww)
            bt_c, bl_c = bt.clamp(0, size - hh), bl.clamp(0, size - ww)
            rms = tables.step(at_c, al_c, bt_c, bl_c, hh, ww, table).sqrt()
            rms = torch.where(inside, rms, torch.full_like(rms, float("inf")))
            weakest = torch.minimum(weakest, rms)
    ok = grey & uniform & (weakest >= need)
    image, index = ok.nonzero(as_tuple=True)
    edge = weakest[image, index].clamp(max=1.0)  # a window on all borders: contrast unknown
    score = edge / (std[image, index] + 0.02)
    return image, top[index], left[index], score


def detect(images, sizes, settings=DEFAULT, blobs=True):
    """Grey squares in each image of a batch.

    images: (N, 3, S, S) or (3, S, S) float in [0, 1]. sizes: window sides to search.
    blobs: also run the second pass for ragged squares (a model's samples).
    Returns a list with, per image, a list of Square (best first), or None for an image with
    non-finite pixels (which is not an image; the caller counts it).
    """
    single = images.dim() == 3
    batch = images.unsqueeze(0) if single else images
    if batch.dim() != 4 or batch.shape[1] != 3 or batch.shape[2] != batch.shape[3]:
        raise ValueError(f"expected (N, 3, S, S) images, got {tuple(images.shape)}")
    size = batch.shape[-1]
    found = [[] for _ in range(batch.shape[0])]
    with _single_thread(), torch.no_grad():
        finite = torch.isfinite(batch.flatten(1)).all(1)
        clean = torch.where(finite[:, None, None, None], batch.detach().float().cpu(),
                            torch.zeros(()))
        tables = _Tables(clean)
        for k in sorted(set(int(k) for k in sizes)):
            if not 1 <= k <= size:
                continue
            image, top, left, score = _windows(tables, k, settings)
            for i, t, l, s in zip(image.tolist(), top.tolist(), left.tolist(), score.tolist()):
                found[i].append((s, t, l, k))
        out = [_cluster(c, settings.overlap) for c in found]
        if blobs and sizes:
            for squares, extra in zip(out, _blobs(clean, min(sizes), max(sizes), settings)):
                squares += [b for b in extra if all(_overlap(b.box(), q.box()) <= 0.3
                                                    for q in squares)]
    out = [squares if ok else None for squares, ok in zip(out, finite.tolist())]
    return out[0] if single else out


def _labels(mask):
    """4-connected component labels of a (N, S, S) bool mask: 0 outside, else the smallest flat
    index + 1 of the component's pixels."""
    n, size = mask.shape[0], mask.shape[-1]
    big = size * size + 1
    labels = torch.where(mask,
                         torch.arange(1, size * size + 1).view(1, size, size).expand(n, -1, -1),
                         torch.full((), big))
    while True:
        p = torch.nn.functional.pad(labels, (1, 1, 1, 1), value=big)
        low = torch.minimum(torch.minimum(p[:, :-2, 1:-1], p[:, 2:, 1:-1]),
                            torch.minimum(p[:, 1:-1, :-2], p[:, 1:-1, 2:]))
        new = torch.where(mask, torch.minimum(labels, low), labels)
        if torch.equal(new, labels):
            return torch.where(mask, labels, torch.zeros((), dtype=labels.dtype))
        labels = new


def _blobs(images, smallest, largest, settings):
    """Second pass: connected blobs of grey-looking pixels shaped like a square of side
    `smallest`…`largest` (bounding box within 0.75·smallest … 1.3·largest, filling at least
    `blob_fill` of it and, from 8 px up, at least three of its four corners (a disc does not),
    uniform, with a clear ring around)."""
    size = images.shape[-1]
    greyness = (images - GREY).abs().amax(1)                        # (N, S, S)
    labels = _labels(greyness <= settings.blob_tint)
    lo, hi = 0.75 * smallest, 1.3 * largest
    out = []
    for i in range(images.shape[0]):
        found = []
        ids, areas = labels[i].flatten().unique(return_counts=True)
        for label, area in zip(ids.tolist(), areas.tolist()):
            if label == 0 or area < settings.blob_fill * lo * lo:
                continue
            comp = labels[i] == label
            rows, cols = comp.any(1).nonzero().flatten(), comp.any(0).nonzero().flatten()
            t, b, l, r = rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1
            h, w = b - t, r - l
            if not (lo <= h <= hi and lo <= w <= hi) or area < settings.blob_fill * h * w:
                continue
            qh, qw = max(1, h // 4), max(1, w // 4)
            corners = [comp[t:t + qh, l:l + qw], comp[t:t + qh, r - qw:r],
                       comp[b - qh:b, l:l + qw], comp[b - qh:b, r - qw:r]]
            if min(h, w) >= 8 and sum(c.float().mean().item() >= 0.5 for c in corners) < 3:
                continue
            pixels = images[i][:, comp]
            if pixels.std(1, unbiased=False).pow(2).mean().sqrt().item() > settings.blob_spread:
                continue
            grown = torch.nn.functional.max_pool2d(comp[None, None].float(), 3, 1, 1)[0, 0] > 0
            ring = grown & ~comp
            if ring.any() and greyness[i][ring].mean().item() < settings.blob_ring:
                continue
            side = round((h + w) / 2)
            top = min(max(round(t + h / 2 - side / 2), 0), size - side)
            left = min(max(round(l + w / 2 - side / 2), 0), size - side)
            found.append(Square(top, left, side, round(area / (h * w), 4)))
        out.append(found)
    return out


def _overlap(a, b):
    """Intersection of two (top, left, k) boxes over the smaller one's area."""
    (ta, la, ka), (tb, lb, kb) = a, b
    h = min(ta + ka, tb + kb) - max(ta, tb)
    w = min(la + ka, lb + kb) - max(la, lb)
    return max(h, 0) * max(w, 0) / min(ka * ka, kb * kb)


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def _cluster(candidates, overlap):
    """Greedy clusters of overlapping windows, best first; each reported as its members' median."""
    seeds, members = [], []
    for score, t, l, k in sorted(candidates, reverse=True):
        for seed, group in zip(seeds, members):
            if _overlap(seed[1:], (t, l, k)) > overlap:
                group.append((t, l, t + k, l + k))
                break
        else:
            seeds.append((score, t, l, k))
            members.append([(t, l, t + k, l + k)])
    squares = []
    for (score, *_), group in zip(seeds, members):
        top, left = _median([m[0] for m in group]), _median([m[1] for m in group])
        bottom, right = _median([m[2] for m in group]), _median([m[3] for m in group])
        side = max(1, round(((bottom - top) + (right - left)) / 2))
        squares.append(Square(top, left, side, round(score, 4)))
    return squares


def count(images, sizes, settings=DEFAULT):
    """Number of squares per image (None for a non-finite image)."""
    return [None if found is None else len(found) for found in detect(images, sizes, settings)]


def match(found, truth, min_iou=0.5):
    """Greedy one-to-one matching of detected boxes to true (top, left, size) boxes by IoU.

    Returns (true positives, false positives, false negatives)."""
    unmatched = list(truth)
    tp = 0
    for square in found:
        box = square.box() if isinstance(square, Square) else tuple(square)
        best = max(unmatched, key=lambda t: iou(box, t), default=None)
        if best is not None and iou(box, best) >= min_iou:
            unmatched.remove(best)
            tp += 1
    return tp, len(found) - tp, len(unmatched)


def iou(a, b):
    (ta, la, ka), (tb, lb, kb) = a, b
    h = max(min(ta + ka, tb + kb) - max(ta, tb), 0)
    w = max(min(la + ka, lb + kb) - max(la, lb), 0)
    inter = h * w
    return inter / (ka * ka + kb * kb - inter)


def outline(image, squares, colour=(1.0, 0.0, 0.0)):
    """A copy of a (3, S, S) image with a one-pixel frame drawn just outside each square (clipped to
    the image), so the square itself stays visible."""
    out = image.clone()
    size = out.shape[-1]
    c = torch.tensor(colour, dtype=out.dtype)[:, None]
    for square in squares:
        t, l, k = square.box() if isinstance(square, Square) else square
        top, bottom, left, right = t - 1, t + k, l - 1, l + k
        cols = slice(max(left, 0), min(right, size - 1) + 1)
        rows = slice(max(top, 0), min(bottom, size - 1) + 1)
        for r in (top, bottom):
            if 0 <= r < size:
                out[:, r, cols] = c
        for col in (left, right):
            if 0 <= col < size:
                out[:, rows, col] = c
    return out


def detector_sizes_for(square, image_size):
    """Window sizes for a known trained square size (around it), else every plausible size."""
    return candidate_sizes(square, image_size) if square else all_sizes(image_size)
