"""Tensors to PNG files without NumPy, and image grids people look at.

Non-finite pixels (a Glow's inverse can overflow at high temperature) are never written as if they
were an image: `grid` draws such tiles as a magenta/black checkerboard and returns how many there
were, so callers can count and report them.
"""

import torch
from PIL import Image

from ..atomic import atomic_write


def finite_mask(batch):
    """(N,) bool: which images have only finite pixels."""
    return torch.isfinite(batch.flatten(1)).all(1)


def to_pil(image):
    """(3, H, W) float in [0, 1] → RGB PIL image (values clamped, rounded)."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    h, w = pixels.shape[1:]
    return Image.frombytes("RGB", (w, h), bytes(pixels.permute(1, 2, 0).cpu().flatten().tolist()))


def invalid_tile(size):
    """A magenta/black checkerboard: unmistakably not a picture."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    check = ((ys // max(size // 4, 1) + xs // max(size // 4, 1)) % 2).float()
    return torch.stack([check, torch.zeros_like(check), check])


def grid(rows, padding=2, background=1.0):
    """Rows of (N_i, 3, S, S) images in [0, 1] → ((3, H, W) grid, number of non-finite tiles)."""
    rows = [r.detach().float().cpu() for r in rows]
    size = rows[0].shape[-1]
    columns = max(r.shape[0] for r in rows)
    step = size + padding
    canvas = torch.full((3, padding + step * len(rows), padding + step * columns), background)
    bad = 0
    for i, row in enumerate(rows):
        ok = finite_mask(row)
        bad += int((~ok).sum())
        for j, image in enumerate(row):
            tile = image.clamp(0, 1) if ok[j] else invalid_tile(size)
            top, left = padding + i * step, padding + j * step
            canvas[:, top : top + size, left : left + size] = tile
    return canvas, bad


def save_png(image, path):
    """Write a (3, H, W) tensor in [0, 1] or a PIL image as PNG atomically: the one PNG writer."""
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    return atomic_write(path, lambda f: pil.save(f, format="PNG"))
