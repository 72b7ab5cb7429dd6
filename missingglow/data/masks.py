"""Grey squares placed from (seed, i): the same image always has its squares in the same place.

Positions come from sha256 of the text "missingglow-squares:{seed}:{i}:{j}" (square j of image i):
its first 8 bytes, as a big-endian integer, modulo S-K+1 give the top row, the next 8 the left
column. That is a pure function of (seed, i, j, K, S): the same in every run, process, platform and
torch version (no global RNG, no Python `hash()`). Squares of one image are drawn independently and
may overlap; they always lie wholly inside the image (0 <= top, left <= S-K).

Users' own holes come from a mask file (non-zero = missing) or an image's alpha channel
(transparent = missing), taken through the same resize and centre crop as the image.
"""
import hashlib
import os

import torch

from ..errors import UserError

GREY = 128 / 255  # exactly 0 after 5-bit preprocessing: floor(128 / 8) / 32 - 0.5 == 0


def check_squares(square, count, size):
    """A UserError for a square size or count that cannot be used with images of `size` pixels."""
    if square < 0 or count < 0:
        raise UserError(f"square size ({square}) and count ({count}) must be 0 or more")
    if square > size:
        raise UserError(f"a {square}-pixel square does not fit in a {size}×{size} image; "
                        f"choose a square size of at most {size} (or a larger --size)")


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
        out[..., top:top + square, left:left + square] = fill
    return out


def square_mask(positions, square, size):
    """Boolean mask, True inside any square: (1, S, S) for (count, 2) positions, (N, 1, S, S) for
    a batch (N, count, 2)."""
    if positions.dim() == 3:
        return torch.stack([square_mask(p, square, size) for p in positions])
    mask = torch.zeros((1, size, size), dtype=torch.bool)
    for top, left in positions.tolist():
        mask[:, top:top + square, left:left + square] = True
    return mask


def _hole_from(img, size, what):
    """A Pillow 'L' image of 255 = missing → (1, size, size) bool, through the images' geometry."""
    from PIL import Image

    from .imagefolder import resize_crop

    # BOX keeps a model pixel missing when any source pixel under it is missing
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.NEAREST if scale > 1 else Image.BOX)
    img = resize_crop(img, size)
    hole = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, size, size) > 0
    if not hole.any():
        raise UserError(f"{what} marks no pixel as missing; nothing to restore")
    if hole.all():
        raise UserError(f"{what} marks every pixel as missing; keep some of the image")
    return hole


def load_mask(path, image_size, size):
    """A mask file (non-zero = missing) for an image of `image_size` (w, h) → (1, size, size)
    bool."""
    from PIL import Image

    if not os.path.isfile(path):
        raise UserError(f"mask {path} not found")
    try:
        with Image.open(path) as img:
            img.load()
            grey = img.convert("L")
    except Exception as err:  # noqa: BLE001 - any decoding failure is the user's file
        raise UserError(f"cannot read mask {path} as an image ({type(err).__name__}); pass a PNG "
                        "whose non-zero pixels mark what is missing") from None
    if grey.size != tuple(image_size):
        raise UserError(f"mask {path} is {grey.size[0]}×{grey.size[1]} but its image is "
                        f"{image_size[0]}×{image_size[1]}; pass a mask of the image's size")
    return _hole_from(grey.point(lambda v: 255 if v else 0), size, f"mask {path}")


def alpha_mask(img, size, path):
    """The transparent part (alpha < 128) of an opened Pillow image → (1, size, size) bool, or None
    when the image has no alpha channel."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
        return None
    alpha = img.getchannel("A").point(lambda v: 255 if v < 128 else 0)
    return _hole_from(alpha, size, f"the alpha channel of {path}")
