"""Tensors to and from PNG files without NumPy, and image grids people look at.

Non-finite pixels (a Glow's inverse can overflow at high temperature) are never written as if they
were an image: `grid` draws such tiles as a magenta/black checkerboard and returns how many there
were, so callers can count and report them.
"""
import os

import torch
from PIL import Image

from ..atomic import atomic_write
from ..errors import UserError


def finite_mask(batch):
    """(N,) bool: which images have only finite pixels."""
    return torch.isfinite(batch.flatten(1)).all(1)


def to_pil(image):
    """(3, H, W) float in [0, 1] → RGB PIL image (values clamped, rounded)."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    h, w = pixels.shape[1:]
    return Image.frombytes("RGB", (w, h), bytes(pixels.permute(1, 2, 0).cpu().flatten().tolist()))


def from_pil(image):
    """RGB PIL image → (3, H, W) float32 in [0, 1]."""
    image = image.convert("RGB")
    w, h = image.size
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(h, w, 3).permute(2, 0, 1).float().div(255)


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
            canvas[:, top:top + size, left:left + size] = tile
    return canvas, bad


def save_png(image, path):
    """Write a (3, H, W) image as PNG atomically."""
    return atomic_write(path, lambda f: to_pil(image).save(f, format="PNG"))


def load_image(path, size):
    """An image file as (3, size, size) in [0, 1]: RGB, shorter side resized, centre-cropped.

    The same geometry as the dataset cache (docs/conventions.md §3), so a user's photo meets the
    model as the training images did.
    """
    from .imagefolder import load_square  # the one decode/resize/crop the cache also uses

    if not os.path.isfile(path):
        raise UserError(f"image {path} not found")
    data, note = load_square(path, size)
    if data is None:
        raise UserError(f"cannot read {path} as an image ({note}); "
                        "pass a PNG, JPEG, BMP or WebP file")
    pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).float().div(255)
