"""Grey squares placed from (seed, i): the same image always has its squares in the same place.

Positions come from sha256 of the text "missingglow-squares:{seed}:{i}:{j}" (square j of image i):
its first 8 bytes, as a big-endian integer, modulo S-K+1 give the top row, the next 8 the left
column. That is a pure function of (seed, i, j, K, S): the same in every run, process, platform and
torch version (no global RNG, no Python `hash()`). Squares of one image are drawn independently and
may overlap; they always lie wholly inside the image (0 <= top, left <= S-K).

Users' own holes (a mask file, an image's alpha channel) are read beside their images, in
data/images.py.
"""

import hashlib

import torch

from ..errors import UserError

GREY = 128 / 255  # exactly 0 after 5-bit preprocessing: floor(128 / 8) / 32 - 0.5 == 0


def check_squares(square, count, size):
    """A UserError for a square size or count that cannot be used with images of `size` pixels."""
    if square < 0 or count < 0:
        raise UserError(f"square size ({square}) and count ({count}) must be 0 or more")
    if square > size:
        raise UserError(
            f"a {square}-pixel square does not fit in a {size}×{size} image; "
            f"choose a square size of at most {size} (or a larger --size)"
        )


def square_positions(seed, index, square, count, size):
    """(count, 2) int64 tensor of (top, left); shape (0, 2) when square or count is 0."""
    check_squares(square, count, size)
    if square == 0 or count == 0:
        return torch.zeros((0, 2), dtype=torch.int64)
    span = size - square + 1
    out = []
    for j in range(count):
        d = hashlib.sha256(f"missingglow-squares:{seed}:{index}:{j}".encode()).digest()
        out.append((int.from_bytes(d[:8], "big") % span, int.from_bytes(d[8:16], "big") % span))
    return torch.tensor(out, dtype=torch.int64)


def apply_squares(image, positions, square, fill=GREY):
    """A copy of `image` (C, S, S) with each square filled with `fill`."""
    out = image.clone()
    for top, left in positions.tolist():
        out[..., top : top + square, left : left + square] = fill
    return out


def square_mask(positions, square, size):
    """Boolean mask, True inside any square: (1, S, S) for (count, 2) positions, (N, 1, S, S) for
    a batch (N, count, 2)."""
    if positions.dim() == 3:
        return torch.stack([square_mask(p, square, size) for p in positions])
    mask = torch.zeros((1, size, size), dtype=torch.bool)
    for top, left in positions.tolist():
        mask[:, top : top + square, left : left + square] = True
    return mask
