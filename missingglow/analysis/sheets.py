"""Labelled image sheets people look at: samples per temperature, detections outlined.

Tiles smaller than `min_tile` pixels are enlarged by a whole factor (nearest neighbour, so every
model pixel stays a sharp block) and non-finite images are drawn as checkerboards.
"""
import math

import torch

from ..data.images import finite_mask, grid, to_pil
from .plot import label_rows
from .runs import sample_images
from .squares import outline


def labelled_grid(rows, labels, min_tile):
    """Rows of (N, 3, S, S) images → (PIL image with a label per row, non-finite count)."""
    size = rows[0].shape[-1]
    scale = max(1, -(-min_tile // size))
    if scale > 1:
        rows = [torch.nn.functional.interpolate(r, scale_factor=scale, mode="nearest")
                for r in rows]
    canvas, bad = grid(rows)
    return label_rows(to_pil(canvas), labels, 2, size * scale + 2), bad


def column_sheet(columns, labels, min_tile):
    """One column per item, (K_i, 3, S, S) each, shorter columns padded with white at the bottom;
    a label per row, "original" added when some column is longer than `labels`."""
    depth = max(c.shape[0] for c in columns)
    labels = list(labels) + (["original"] if depth > len(labels) else [])
    blank = torch.ones(columns[0].shape[1:])
    rows = [torch.stack([c[r] if r < c.shape[0] else blank for c in columns])
            for r in range(depth)]
    return labelled_grid(rows, labels, min_tile)[0]


def contact_sheet(rows, labels, min_tile=48):
    """Samples with their detected squares outlined: one row per entry of `rows` [(images, found)];
    non-finite samples as checkerboards. Returns (PIL image, non-finite count)."""
    tiles = [torch.stack([outline(im, f) if f else im for im, f in zip(images, found)])
             for images, found in rows]
    return labelled_grid(tiles, labels, min_tile)


def sample_sheet(run, temperatures, n, seed, columns=None, min_tile=32):
    """Samples per temperature as one labelled grid: a row per temperature (n per row) when
    several temperatures are asked for, else n samples in rows of `columns`.
    Returns (PIL image, [(t, non-finite count)])."""
    rows, labels, bad = [], [], []
    for t in temperatures:
        images = sample_images(run, n, t, seed)
        bad.append((t, int((~finite_mask(images)).sum())))
        per_row = n if len(temperatures) > 1 else (columns or max(1, math.ceil(math.sqrt(n))))
        for i in range(0, n, per_row):
            rows.append(images[i:i + per_row])
            labels.append(f"t={t:g}" if i == 0 else "")
    return labelled_grid(rows, labels, min_tile)[0], bad
