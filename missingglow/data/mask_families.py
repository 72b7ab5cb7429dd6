"""The holes restoration is scored on: four families of masks over the same held-out images.

A model trained on one kind of hole may restore only that kind; scoring every method on several
families says how far its advantage carries. Each mask is a pure function of (family, seed, image
index, image size[, square side]) drawn from `seeding.generator`, so every method, run and machine
scores the same holes.

- `square`: the training square itself, one K×K square placed by data/masks.py from (seed, index)
  exactly as training and the held-out split place it (pass the run's seed and the cache index).
- `centre`: a centred square of side S // 2 (a quarter of the image when S is even).
- `rectangles`: random axis-aligned rectangles whose union covers a share of the image drawn per
  image, uniform in [0.10, 0.40]: the union reaches the drawn share and passes it by at most 2 % of
  the image (and never 40 %), so the shares are spread as drawn.
- `pixels`: ⌊S²/2⌋ pixels missing, chosen uniformly at random (half of them when S² is even).
"""

import math

import torch

from ..errors import UserError
from ..seeding import generator
from .masks import square_mask, square_positions

FAMILIES = ("square", "centre", "rectangles", "pixels")
RECTANGLE_SHARE = (0.10, 0.40)
RECTANGLE_OVERSHOOT = 0.02  # of the image: how far the last rectangle may take the union past it
_GIVE_UP_AFTER = 50  # rejected rectangles in a row before the sides are halved


def family_mask(family, seed, index, size, square=None):
    """The missing pixels of image `index` under `family`: (1, S, S) bool, True where missing.

    `square` (K) is needed by the `square` family only."""
    if family not in FAMILIES:
        raise UserError(f"mask family must be one of {', '.join(FAMILIES)}, not {family!r}")
    if not isinstance(size, int) or size < 2:
        raise UserError(f"masks need images of at least 2×2 pixels, not {size!r}")
    if family == "square":
        if square is None:
            raise UserError("the square mask family needs the square's side (K)")
        return square_mask(square_positions(seed, index, square, 1, size), square, size)
    if family == "centre":
        return centre_mask(size)
    gen = generator("mask-family", family, seed, index, size)
    if family == "pixels":
        return pixels_mask(size, gen)
    return rectangles_mask(size, gen)


def family_masks(family, seed, indices, size, square=None):
    """family_mask for each index, stacked: (B, 1, S, S) bool."""
    return torch.stack([family_mask(family, seed, i, size, square) for i in indices])


def centre_mask(size):
    side = size // 2
    top = (size - side) // 2
    mask = torch.zeros((1, size, size), dtype=torch.bool)
    mask[:, top : top + side, top : top + side] = True
    return mask


def pixels_mask(size, gen):
    chosen = torch.randperm(size * size, generator=gen)[: size * size // 2]
    mask = torch.zeros(size * size, dtype=torch.bool)
    mask[chosen] = True
    return mask.view(1, size, size)


def rectangles_mask(size, gen):
    """Rectangles with sides in [S/8, S/2] are added until their union reaches the drawn share; a
    rectangle that would take the union too far past it is redrawn (smaller after repeated
    misses, down to single pixels, so the loop always ends)."""
    area = size * size
    low, high = RECTANGLE_SHARE
    share = low + (high - low) * torch.rand((), generator=gen, dtype=torch.float64).item()
    target = min(max(math.ceil(share * area), math.ceil(low * area)), math.floor(high * area))
    cap = min(math.floor(high * area), target + math.floor(RECTANGLE_OVERSHOOT * area))
    mask = torch.zeros((size, size), dtype=torch.bool)
    shortest, longest = max(1, size // 8), max(1, size // 2)
    covered, misses = 0, 0
    while covered < target:
        h, w = torch.randint(shortest, longest + 1, (2,), generator=gen).tolist()
        top = torch.randint(0, size - h + 1, (), generator=gen).item()
        left = torch.randint(0, size - w + 1, (), generator=gen).item()
        grown = mask.clone()
        grown[top : top + h, left : left + w] = True
        if int(grown.sum()) > cap:
            misses += 1
            if misses == _GIVE_UP_AFTER:
                longest = max(1, longest // 2)
                shortest = min(shortest, longest)
                misses = 0
            continue
        mask, covered, misses = grown, int(grown.sum()), 0
    return mask.unsqueeze(0)
