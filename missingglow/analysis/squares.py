"""The grey-square detector: finds K×K patches of (near-)uniform grey and counts them.

A window (top, left, k) is a square when
  1. its inside is near grey: every channel's mean within `tint` of 128/255 (a model's squares
     come out slightly tinted);
  2. its inside is flat: pooled standard deviation at most `spread` (a model's squares carry
     noise), and each quarter's and each corner's mean close to the whole's (a smooth natural
     region has a gradient, a disc no corners, a pasted square neither);
  3. every side that is not on the image border is an edge, right where the window puts it: the
     values just inside the side match the inside colour, and either each third of the side steps
     from them by at least `step` (and `step_ratio` times the inside's spread), or at least
     `side_share` of the side lies off the inside colour by more than `noise_z` times that spread
     (at least `contrast`), `mean_share` on average over the sides. The share is what finds a
     square pasted against grey content along part of a side; the steps find a noisy one.

Rule 3 is what tells a square from natural grey content: a grey background, a grey shirt or a grey
gradient larger than the window has grey on at least one side of every window inside it; a grey
rectangle that is not square fails on its long sides; a grey disc is grey beyond the middle of
each side. Noise and texture are told apart by scale: the inside's spread and the values along the
sides are measured on b×b block means (b = 1 below `scale2_from` px, 2, then 3 from
`scale3_from`): averaging shrinks white noise, not texture. Windows of k >= `margin_from` ignore a
one-pixel band inside their edge, so a blurred edge does not spoil the flatness.

Where a masked dataset's squares are exact (the inside is 128/255 to within `exact`, noise-free),
nothing needs averaging: such windows are judged pixel by pixel on the line just outside, where an
outside pixel is off when it differs by `exact_contrast`; a natural region is never that flat at
exactly that grey, so this is what makes the counter reliable on masked photographs, grayscale ones
included (where every pixel is grey in hue, and only level, flatness and edges tell).

All windows of all candidate sizes are scored at once with integral images (torch, no NumPy). The
accepted windows around one square (a few sizes and one-pixel shifts) form a cluster: clusters are
formed greedily from the best-scoring window (score: edge contrast over the inside's spread), any
window overlapping the cluster's seed by more than half of the smaller one joins it, and the
reported box is the median of the cluster's edges (of its exact windows, if any). So two squares
that overlap by more than half count as one (a person counting would hesitate too); squares that
overlap less count as two; two squares that touch are one grey rectangle, and neither is found.
When every size searched is below `blob_below`, a second pass also counts ragged grey blobs shaped
like a square (a model's smallest squares); on larger searches grey blobs in photos are too common.
"""

import itertools
from dataclasses import dataclass

import torch

from ..data.masks import GREY


@dataclass(frozen=True)
class Settings:
    tint: float = 0.10  # max |channel mean − grey| inside
    spread: float = 0.05  # max pooled std inside
    level: float = 0.01  # max |quarter's mean − inside mean| (no shading, no gradient) ...
    level_z: float = 3.0  # ... or this many standard errors of a quarter's mean, if more
    contrast: float = 0.03  # an outside value is off the square when it differs by more than this
    noise_z: float = 6.0  # ... and by more than this many times the inside's spread
    side_share: float = 0.5  # min share of off values along each side that is not on the border
    mean_share: float = 0.7  # ... and on average over those sides (a disc is half off on each)
    step: float = 0.05  # or: each third of the side steps from the inside by this RMS ...
    step_ratio: float = 3.0  # ... and this many times the inside's spread (2×2 or 3×3 blocks)
    pixel_step_ratio: float = 2.0  # ... or its pixels' (below `scale2_from`)
    parts: int = 3
    flat: float = 1.0  # values just inside a side within this many off thresholds ...
    flat_share: float = 0.9  # ... along this share of a side for its steps to count
    exact: float = 0.006  # an inside this close to grey in mean and std is the mask's own grey
    exact_contrast: float = 0.02  # ... and then its outside pixels need only differ this much
    margin_from: int = 8  # windows this size and larger ignore a 1-px band inside their edge
    scale2_from: int = 10  # windows this size and larger compare 2×2 blocks ...
    scale3_from: int = 14  # ... and from this size 3×3 blocks
    overlap: float = 0.5  # windows overlapping a cluster's seed by more than this join it
    # the second pass, for a model's ragged squares: blobs of grey-looking pixels
    blob_below: int = 8  # only when every size searched is below this (larger squares keep
    #                          straight edges, and on photos grey blobs are everywhere)
    blob_tint: float = 0.10  # a pixel looks grey when every channel is this close to grey
    blob_fill: float = 0.6  # min share of its bounding box a blob covers
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
    return (
        flat[:, :, b + left + w]
        - flat[:, :, a + left + w]
        - flat[:, :, b + left]
        + flat[:, :, a + left]
    )


class _single_thread:
    """The detector's many small tensor ops run far slower split over threads on a busy machine."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


class _Tables:
    """Integral images of one batch, so that any rectangle's sums cost four look-ups: of the
    pixels and their squares, and of the b×b block means and their squares (the inside's spread
    at scale b: noise shrinks b-fold from pixels to b×b blocks, texture does not)."""

    def __init__(self, images, scales):
        x = images.double()
        self.size = x.shape[-1]
        self.ii1, self.ii2 = _integral(x), _integral(x**2)
        self.sums = {}
        for b in scales:
            blocks = torch.nn.functional.avg_pool2d(x, b, 1) if b > 1 else x
            self.sums[b] = (
                (_integral(blocks), _integral(blocks**2)) if b > 1 else (self.ii1, self.ii2)
            )
        # the same, flat and channels last, for gathering per candidate window
        self.flat = {
            id(ii): (ii.flatten(2).transpose(1, 2).contiguous(), ii.shape[-1])
            for pair in self.sums.values()
            for ii in pair
        }

    def mean(self, image, top, left, h, w, ii=None):
        """Mean colour of rectangles [top, top+h) × [left, left+w) of image[i] for index tensors
        top, left (Q, n) and sizes h, w (ints or (Q, 1)): (Q, n, 3). Of the pixels, or of what
        the integral image `ii` sums."""
        f, row = self.flat[id(self.ii1 if ii is None else ii)]
        a, b = top * row, (top + h) * row
        i = image[:, None]
        total = f[i, b + left + w] - f[i, a + left + w] - f[i, b + left] + f[i, a + left]
        area = torch.as_tensor(h * w, dtype=torch.float64)
        return total / (area.clamp(min=1)[..., None] if area.dim() else max(float(area), 1.0))


def _sides(tables, image, t, l, k, m, b):
    """For the four sides (top, bottom, left, right) of windows (t, l, k): whether the side lies
    on the image border (Q, 4); the means of b×b blocks along it just outside (only as deep as
    the image allows) and just inside its ignored band of m pixels (Q, 4, n, 3)."""
    size, n = tables.size, k - 2 * m - b + 1
    along = torch.arange(n)
    rows, cols = (t + m)[:, None] + along, (l + m)[:, None] + along
    above, below = t.clamp(max=b)[:, None], (size - t - k).clamp(max=b)[:, None]
    before, after = l.clamp(max=b)[:, None], (size - l - k).clamp(max=b)[:, None]

    def fixed(v):
        return v[:, None].expand(-1, n)

    out = [
        tables.mean(image, fixed(t) - above, cols, above, b),
        tables.mean(image, fixed(t + k), cols, below, b),
        tables.mean(image, rows, fixed(l) - before, b, before),
        tables.mean(image, rows, fixed(l + k), b, after),
    ]
    ins = [
        tables.mean(image, fixed(t + m), cols, b, b),
        tables.mean(image, fixed(t + k - m - b), cols, b, b),
        tables.mean(image, rows, fixed(l + m), b, b),
        tables.mean(image, rows, fixed(l + k - m - b), b, b),
    ]
    border = torch.stack([t == 0, t + k == size, l == 0, l + k == size], 1)
    return border, torch.stack(out, 1), torch.stack(ins, 1)


def _strength(tables, image, t, l, k, m, b, mu, spread, need, settings):
    """How clearly each side of windows (t, l, k) is an edge, at scale b: 1 where it steps from
    the inside by at least `step` (and `step_ratio` times the spread) in each third, else the share
    of outside values off the inside colour `mu` by more than `need`; 1 on the image border.
    Returns border (Q, 4), strength (Q, 4) and the RMS difference outside (Q, 4)."""
    border, values, inside = _sides(tables, image, t, l, k, m, b)
    n = values.shape[2]
    diff = (values - mu[:, None, None, :]).abs().amax(3)  # (Q, 4, n)
    # the edge is where the window puts it: the values just inside are the inside colour
    flat = (inside - mu[:, None, None, :]).abs().amax(3) <= need[:, None, None] * settings.flat
    share = ((diff > need[:, None, None]) & flat).double().mean(2)  # (Q, 4)
    parts = max(1, min(settings.parts, n // 2))
    cuts = [round(n * p / parts) for p in range(parts + 1)]
    steps = (values - inside).pow(2).mean(3)  # (Q, 4, n)
    weakest = torch.stack([steps[:, :, a:c].mean(2) for a, c in itertools.pairwise(cuts)], 2)
    weakest = weakest.amin(2).sqrt()  # (Q, 4)
    ratio = settings.step_ratio if b > 1 else settings.pixel_step_ratio
    stepped = weakest >= torch.clamp(ratio * spread, min=settings.step)[:, None]
    stepped &= flat.double().mean(2) >= settings.flat_share
    strength = torch.where(stepped | border, torch.ones_like(share), share)
    return border, strength, diff.pow(2).mean(2).sqrt()


def _scale(k, settings):
    """Block side for comparing a window's outside with its inside: larger windows average more."""
    return 1 if k < settings.scale2_from else 2 if k < settings.scale3_from else 3


def _windows(tables, k, settings):
    """Accepted windows of side k: (image index, top, left, score, exactly grey) tensors."""
    size = tables.size
    m = 1 if k >= settings.margin_from else 0
    b = _scale(k, settings)
    inner = k - 2 * m
    n = inner - b + 1
    if n < 1:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty, torch.zeros(0, dtype=torch.float64), empty.bool()
    span = torch.arange(size - k + 1)
    top = span.repeat_interleave(len(span))
    left = span.repeat(len(span))
    area = inner * inner
    s1 = _rect(tables.ii1, top + m, left + m, inner, inner)
    s2 = _rect(tables.ii2, top + m, left + m, inner, inner)
    mean = s1 / area  # (N, 3, P)
    std = (s2 / area - mean**2).clamp_min(0).mean(1).sqrt()  # (N, P)
    ok = ((mean - GREY).abs().amax(1) <= settings.tint) & (std <= settings.spread)
    image, index = ok.nonzero(as_tuple=True)
    t, l = top[index], left[index]
    mu, sd = mean[image, :, index], std[image, index]  # (Q, 3), (Q,)

    def box(ii, dt, dl, h, w):  # mean over [t+dt, +h) × [l+dl, +w) of each candidate: (Q, 3)
        return tables.mean(image, (t + dt)[:, None], (l + dl)[:, None], h, w, ii)[:, 0]

    # a flat patch has the same mean in each quarter, and in each corner; a smooth natural region
    # has a gradient, a disc has no corners
    keep = torch.ones_like(sd, dtype=torch.bool)
    for part in (inner // 2, max(2, inner // 4)):
        if 1 <= part < inner:
            tol = torch.clamp(settings.level_z * sd / part, min=settings.level)
            for dt in (0, inner - part):
                for dl in (0, inner - part):
                    q = box(tables.ii1, m + dt, m + dl, part, part)
                    keep &= (q - mu).abs().amax(1) <= tol
    image, t, l, mu, sd = image[keep], t[keep], l[keep], mu[keep], sd[keep]
    # the inside's spread at scale b
    ii1, ii2 = tables.sums[b]
    v1, v2 = box(ii1, m, m, n, n), box(ii2, m, m, n, n)
    spread = (v2 - v1**2).clamp_min(0).mean(1).sqrt()  # (Q,)
    need = torch.clamp(settings.noise_z * spread, min=settings.contrast)
    border, strength, rms = _strength(tables, image, t, l, k, m, b, mu, spread, need, settings)
    # a noise-free inside: nothing to average away, so compare pixels one by one on the line just
    # outside (a grey disc then shows no edge at the window's middles). The mask's own grey,
    # exactly, over the whole window (no blur): a window one pixel too large shows none either.
    clean = sd <= settings.exact
    exact = clean & ((mu - GREY).abs().amax(1) <= settings.exact)
    if m:
        w1, w2 = box(tables.ii1, 0, 0, k, k), box(tables.ii2, 0, 0, k, k)
        wsd = (w2 - w1**2).clamp_min(0).mean(1).sqrt()
        exact &= ((w1 - GREY).abs().amax(1) <= settings.exact) & (wsd <= settings.exact)
    for pick, margin, contrast in (
        (clean & ~exact, m, settings.contrast),
        (exact, 0, settings.exact_contrast),
    ):
        pick = pick.nonzero().flatten()
        if len(pick):
            _, strength[pick], rms[pick] = _strength(
                tables,
                image[pick],
                t[pick],
                l[pick],
                k,
                margin,
                1,
                mu[pick],
                sd[pick],
                torch.full_like(sd[pick], contrast),
                settings,
            )
    sides = (~border).sum(1)
    average = torch.where(border, torch.zeros_like(strength), strength).sum(1) / sides.clamp(min=1)
    accept = (
        (strength.amin(1) >= settings.side_share) & (average >= settings.mean_share) & (sides > 0)
    )
    # score: how clearly the weakest inside side stands off, over the inside's spread
    edge = torch.where(border, torch.full_like(rms, float("inf")), rms).amin(1).clamp(max=1.0)
    score = average * edge / (spread + 0.01)
    return image[accept], t[accept], l[accept], score[accept], exact[accept]


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
        clean = torch.where(
            finite[:, None, None, None], batch.detach().float().cpu(), torch.zeros(())
        )
        ks = [k for k in sorted(set(int(k) for k in sizes)) if 1 <= k <= size]
        tables = _Tables(clean, {1} | {_scale(k, settings) for k in ks})
        for k in ks:
            image, top, left, score, exact = _windows(tables, k, settings)
            for i, t, l, s, e in zip(
                image.tolist(),
                top.tolist(),
                left.tolist(),
                score.tolist(),
                exact.tolist(),
                strict=True,
            ):
                found[i].append((s, t, l, k, e))
        out = [_cluster(c, settings.overlap, size) for c in found]
        if blobs and sizes and max(sizes) < settings.blob_below:
            for squares, extra in zip(
                out, _blobs(clean, min(sizes), max(sizes), settings), strict=True
            ):
                squares += [
                    b for b in extra if all(_overlap(b.box(), q.box()) <= 0.3 for q in squares)
                ]
    out = [squares if ok else None for squares, ok in zip(out, finite.tolist(), strict=True)]
    return out[0] if single else out


def _labels(mask):
    """4-connected component labels of a (N, S, S) bool mask: 0 outside, else the smallest flat
    index + 1 of the component's pixels."""
    n, size = mask.shape[0], mask.shape[-1]
    big = size * size + 1
    labels = torch.where(
        mask,
        torch.arange(1, size * size + 1).view(1, size, size).expand(n, -1, -1),
        torch.full((), big),
    )
    while True:
        p = torch.nn.functional.pad(labels, (1, 1, 1, 1), value=big)
        low = torch.minimum(
            torch.minimum(p[:, :-2, 1:-1], p[:, 2:, 1:-1]),
            torch.minimum(p[:, 1:-1, :-2], p[:, 1:-1, 2:]),
        )
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
    greyness = (images - GREY).abs().amax(1)  # (N, S, S)
    labels = _labels(greyness <= settings.blob_tint)
    lo, hi = 0.75 * smallest, 1.3 * largest
    out = []
    for i in range(images.shape[0]):
        found = []
        ids, areas = labels[i].flatten().unique(return_counts=True)
        for label, area in zip(ids.tolist(), areas.tolist(), strict=True):
            if label == 0 or area < settings.blob_fill * lo * lo:
                continue
            comp = labels[i] == label
            rows, cols = comp.any(1).nonzero().flatten(), comp.any(0).nonzero().flatten()
            t, b, l, r = rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1
            h, w = b - t, r - l
            if not (lo <= h <= hi and lo <= w <= hi) or area < settings.blob_fill * h * w:
                continue
            qh, qw = max(1, h // 4), max(1, w // 4)
            corners = [
                comp[t : t + qh, l : l + qw],
                comp[t : t + qh, r - qw : r],
                comp[b - qh : b, l : l + qw],
                comp[b - qh : b, r - qw : r],
            ]
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


def _cluster(candidates, overlap, size):
    """Greedy clusters of overlapping windows, best first; each reported as its members' median
    (of those exactly the mask's grey, if any: they fit the square to the pixel), kept inside the
    S×S image."""
    seeds, members = [], []
    for score, t, l, k, exact in sorted(candidates, reverse=True):
        for seed, group in zip(seeds, members, strict=True):
            if _overlap(seed[1:4], (t, l, k)) > overlap:
                group.append((t, l, t + k, l + k, exact))
                break
        else:
            seeds.append((score, t, l, k))
            members.append([(t, l, t + k, l + k, exact)])
    squares = []
    for (score, *_), group in zip(seeds, members, strict=True):
        group = [g for g in group if g[4]] or group
        top, left = _median([m[0] for m in group]), _median([m[1] for m in group])
        bottom, right = _median([m[2] for m in group]), _median([m[3] for m in group])
        side = min(max(1, round(((bottom - top) + (right - left)) / 2)), size)
        squares.append(Square(min(top, size - side), min(left, size - side), side, round(score, 4)))
    return squares


def count(images, sizes, settings=DEFAULT):
    """Number of squares per image (None for a non-finite image)."""
    return [None if found is None else len(found) for found in detect(images, sizes, settings)]


def detector_sizes_for(square, image_size):
    """Window sizes for a known trained square size (around it), else every plausible size."""
    return candidate_sizes(square, image_size) if square else all_sizes(image_size)
