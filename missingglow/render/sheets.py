"""Labelled image sheets people look at: rows of images, columns per item, squares outlined.

Tiles smaller than `min_tile` pixels are enlarged by a whole factor (nearest neighbour, so every
model pixel stays a sharp block) and non-finite images are drawn as checkerboards.
"""

import torch

from .images import grid, to_pil
from .plot import label_rows


def labelled_grid(rows, labels, min_tile):
    """Rows of (N, 3, S, S) images → (PIL image with a label per row, non-finite count)."""
    size = rows[0].shape[-1]
    scale = max(1, -(-min_tile // size))
    if scale > 1:
        rows = [
            torch.nn.functional.interpolate(r, scale_factor=scale, mode="nearest") for r in rows
        ]
    canvas, bad = grid(rows)
    return label_rows(to_pil(canvas), labels, 2, size * scale + 2), bad


def column_sheet(columns, labels, min_tile):
    """One column per item, (K_i, 3, S, S) each, shorter columns padded with white at the bottom;
    a label per row, "original" added when some column is longer than `labels`."""
    depth = max(c.shape[0] for c in columns)
    labels = list(labels) + (["original"] if depth > len(labels) else [])
    blank = torch.ones(columns[0].shape[1:])
    rows = [torch.stack([c[r] if r < c.shape[0] else blank for c in columns]) for r in range(depth)]
    return labelled_grid(rows, labels, min_tile)[0]


def contact_sheet(rows, labels, min_tile=48):
    """Samples with their detected squares outlined: one row per entry of `rows` [(images, found)];
    non-finite samples as checkerboards. Returns (PIL image, non-finite count)."""
    tiles = [
        torch.stack([outline(im, f) if f else im for im, f in zip(images, found, strict=True)])
        for images, found in rows
    ]
    return labelled_grid(tiles, labels, min_tile)


def outline(image, squares, colour=(1.0, 0.0, 0.0)):
    """A copy of a (3, S, S) image with a one-pixel frame drawn just outside each square (a
    (top, left, K) or a detector's Square), clipped to the image, so the square stays visible."""
    out = image.clone()
    size = out.shape[-1]
    c = torch.tensor(colour, dtype=out.dtype)[:, None]
    for square in squares:
        t, l, k = square.box() if hasattr(square, "box") else square
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
