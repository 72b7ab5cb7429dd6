"""Reading what users give: image files and mask files, through the training images' geometry.

An image file meets the model as the cached training images did (docs/conventions.md §3): RGB,
shorter side resized, centre crop. A mask (a file, or an image's alpha channel) goes through the
same geometry, so its hole lands on the same model pixels.
"""

import os

import torch
from PIL import Image

from ..errors import UserError
from .imagefolder import load_square, resize_crop


def from_pil(image):
    """RGB PIL image → (3, H, W) float32 in [0, 1]."""
    image = image.convert("RGB")
    w, h = image.size
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(h, w, 3).permute(2, 0, 1).float().div(255)


def load_image(path, size):
    """An image file as (3, size, size) in [0, 1]: RGB, shorter side resized, centre-cropped.

    The same geometry as the dataset cache (docs/conventions.md §3), so a user's photo meets the
    model as the training images did.
    """
    if not os.path.isfile(path):
        raise UserError(f"image {path} not found")
    data, note = load_square(path, size)
    if data is None:
        raise UserError(
            f"cannot read {path} as an image ({note}); pass a PNG, JPEG, BMP or WebP file"
        )
    pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).float().div(255)


def _hole_from(img, size, what, none_is_no_hole=False):
    """A Pillow 'L' image of 255 = missing → (1, size, size) bool, through the images' geometry.
    With `none_is_no_hole`, a hole that marks nothing (after the crop) is None, not an error.

    Shrinking keeps a model pixel missing when any source pixel under it is missing (a max over
    each pixel's box: Pillow's averaging BOX filter rounds a lone missing pixel away once a model
    pixel covers a few hundred source pixels); enlarging takes the nearest source pixel."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if scale < 1:
        source = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, 1, h, w)
        shrunk = torch.nn.functional.adaptive_max_pool2d(source.float(), (nh, nw))
        img = Image.frombytes("L", (nw, nh), bytes(shrunk.to(torch.uint8).flatten().tolist()))
    elif (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.NEAREST)
    img = resize_crop(img, size)
    hole = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, size, size) > 0
    if not hole.any():
        if none_is_no_hole:
            return None
        raise UserError(f"{what} marks no pixel as missing; nothing to restore")
    if hole.all():
        raise UserError(f"{what} marks every pixel as missing; keep some of the image")
    return hole


def _open_mask(path):
    """A mask file, decoded (a Pillow image in its own mode); a UserError naming it if it cannot
    be read."""
    if not os.path.isfile(path):
        raise UserError(f"mask {path} not found")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except Exception as err:  # noqa: BLE001 - any decoding failure is the user's file
        raise UserError(
            f"cannot read mask {path} as an image ({type(err).__name__}); pass a PNG "
            "whose non-zero pixels mark what is missing"
        ) from None


def _marked(grey):
    """A mask as Pillow 'L' → 255 where it is not zero (missing), else 0."""
    return grey.point(lambda v: 255 if v else 0)


def load_mask(path, image_size, size):
    """A mask file (non-zero = missing) for an image of `image_size` (w, h) → (1, size, size)
    bool."""
    grey = _open_mask(path).convert("L")
    if grey.size != tuple(image_size):
        raise UserError(
            f"mask {path} is {grey.size[0]}×{grey.size[1]} but its image is "
            f"{image_size[0]}×{image_size[1]}; pass a mask of the image's size"
        )
    return _hole_from(_marked(grey), size, f"mask {path}")


MASK_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "I", "I;16", "I;16L", "I;16B", "I;16N")


def _has_transparency(img):
    """Whether a mask has a pixel that is not fully opaque (an alpha channel or a transparent
    colour)."""
    alpha = img.mode in ("LA", "PA", "RGBA") or (
        "transparency" in img.info and img.mode in ("P", "L", "RGB")
    )
    return alpha and img.convert("RGBA").getextrema()[3][0] < 255


def training_mask(path, image_size, size):
    """A training image's mask file (non-zero = missing) → (1, size, size) bool, or None when it
    marks nothing. Stricter than `load_mask` because nobody looks at each result: the mask must be
    grey or colour without transparency (anything else reads ambiguously as grey), and may be
    any size with its image's shape, to within a pixel (so half-size masks work)."""
    img = _open_mask(path)
    if img.mode not in MASK_MODES:
        raise UserError(
            f"mask {path} is a {img.mode} image; save it as a black-and-white PNG whose "
            "non-zero pixels mark what is missing"
        )
    if _has_transparency(img):
        raise UserError(
            f"mask {path} has transparent pixels, but a mask marks holes by its non-zero "
            "pixels: save it without transparency (or use --masks alpha on the images)"
        )
    (w, h), (iw, ih) = img.size, image_size
    if abs(w * ih - h * iw) > max(iw, ih):
        raise UserError(
            f"mask {path} is {w}×{h} but its image is {iw}×{ih}, another shape; give each "
            "image a mask of its own shape (any size)"
        )
    return _hole_from(_marked(img.convert("L")), size, f"mask {path}", none_is_no_hole=True)


def alpha_mask(img, size, path, below=128):
    """The transparent part (alpha < `below`) of an opened Pillow image → (1, size, size) bool, or
    None when it marks nothing: no alpha channel, or one that is opaque wherever the crop keeps (a
    logo saved as RGBA has no hole; the mask, the square or the detector decide for it instead).
    Training's holes take every pixel that is not fully opaque (`below` 255; data/holes.py)."""
    if "transparency" in img.info and img.mode in ("P", "L", "RGB"):
        img = img.convert("RGBA")  # a transparent colour (or palette entry) is an alpha channel
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
        return None
    alpha = img.getchannel(img.getbands()[-1])  # "A", or "a" for premultiplied modes
    alpha = alpha.point(lambda v: 255 if v < below else 0)
    return _hole_from(alpha, size, f"the alpha channel of {path}", none_is_no_hole=True)
