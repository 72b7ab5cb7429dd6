"""Grey squares counted in image files (`missingglow squares FILE…`).

Each file is counted at the size the detector should see it: the size asked for (a checkpoint's
image size), else the file's shorter side, through the training images' geometry. A file that
cannot be read is reported beside the others' counts, never instead of them.
"""

import os
from dataclasses import dataclass

from PIL import Image

from ..errors import UserError
from .squares import detect, detector_sizes_for


@dataclass
class FileCount:
    path: str
    found: list = None  # the squares found (best first); None when the file failed
    error: str = None  # what is wrong with the file and what to do


def shorter_side(path):
    """The shorter side of an image file in pixels; UserError when it is no readable image."""
    if not os.path.isfile(path):
        raise UserError(f"image {path} not found")
    try:
        with Image.open(path) as img:
            return min(img.size)
    except Exception:  # noqa: BLE001 - any decoding failure is the user's file
        raise UserError(
            f"cannot read {path} as an image; pass a PNG, JPEG, BMP or WebP file"
        ) from None


def count_in_files(paths, square=None, image_size=None):
    """A FileCount per path, in order. `square`: the square side to look for (else any plausible
    size); `image_size`: resize every file to this side (else each file's shorter side)."""
    from ..data.images import load_image

    counts = []
    for path in paths:
        try:
            size = image_size or shorter_side(path)
            found = detect(load_image(path, size), detector_sizes_for(square, size))
            counts.append(FileCount(path, found))
        except UserError as err:
            counts.append(FileCount(path, error=str(err)))
    return counts


def format_count(count):
    """'photo.png: 1 square at (top,left,size) (8,7,10)' for a file that was counted."""
    n = len(count.found)
    where = ", ".join(f"({s.top},{s.left},{s.size})" for s in count.found)
    return (
        f"{count.path}: {n} square{'s' if n != 1 else ''}"
        f"{' at (top,left,size) ' + where if count.found else ''}"
    )
