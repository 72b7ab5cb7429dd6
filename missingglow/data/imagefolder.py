"""Image folders: find the images, fingerprint the file list, decode one image to S×S RGB bytes.

Pillow only (no torch, no NumPy), so that decoding workers stay light. `load_square` never raises
for a bad file: it returns the reason instead, and the caller counts and names the skipped files.
"""

import hashlib
import os
import warnings

from PIL import Image, ImageOps

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_EXIF_ORIENTATION = 0x0112


def find_images(root):
    """Image files under `root`, searched recursively, as sorted relative paths ('/'-separated).

    Returns (relative paths, number of other files ignored). Hidden files and folders (a leading
    '.', e.g. macOS `._x.jpg` resource forks) are skipped; symbolic links to folders are followed
    once (a link loop is not followed twice).
    """
    found, ignored = [], 0
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = os.path.relpath(folder, root)
        for name in files:
            if name.startswith("."):
                continue
            if name.lower().endswith(EXTENSIONS):
                rel = name if rel_folder == "." else os.path.join(rel_folder, name)
                found.append(rel.replace(os.sep, "/"))
            else:
                ignored += 1
    found.sort()
    return found, ignored


def file_list_digest(root, rel_paths):
    """sha256 over the sorted relative paths, sizes and modification times (contents not read)."""
    h = hashlib.sha256()
    for rel in rel_paths:
        try:
            st = os.stat(os.path.join(root, rel))
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # a broken link: decoding will skip it and say so
            stamp = "unreadable"
        h.update(f"{rel}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def to_rgb(img):
    """Any Pillow mode as 8-bit RGB: 16-bit scaled (not clipped), transparency over white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grey: keep the top 8 bits instead of saturating at 255.
        img = img.convert("I") if img.mode != "I" else img
        if img.getextrema()[1] > 255:
            img = img.point(lambda v: v * (1 / 256))  # v >> 8
        img = img.convert("L")
    elif img.mode == "F":
        lo, hi = img.getextrema()
        top = 1.0 if hi <= 1.0 else 255.0
        img = img.point(lambda v: v * (255.0 / top)).convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB") if img.mode != "RGB" else img


def resize_crop(img, size):
    """Shorter side resized to `size` (up or down, Lanczos), then the centre size×size crop."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    if (nw, nh) != (size, size):
        img = img.crop((left, top, left + size, top + size))
    return img


def exif_orientation(img):
    """The EXIF orientation tag of an opened image (1: as stored)."""
    return (img.getexif().get(_EXIF_ORIENTATION, 1) if hasattr(img, "getexif") else 1) or 1


def upright(img):
    """An opened image loaded and turned as its EXIF orientation says, as the cache holds it."""
    orientation = exif_orientation(img)
    img.load()
    return ImageOps.exif_transpose(img) if orientation != 1 else img


def upright_size(img):
    """(w, h) of an opened image once turned upright, without decoding its pixels."""
    w, h = img.size
    return (h, w) if exif_orientation(img) in (5, 6, 7, 8) else (w, h)


def folder_path(path):
    """A folder given by the user (str or path-like, `~` allowed) as an absolute path: what a run
    stores and what its caches are named by, so that it resolves the same from any directory."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def open_image(path):
    """An image file opened lazily by Pillow. Pillow warns from MAX_IMAGE_PIXELS and refuses from
    twice that; a large photo below the refusal decodes (JPEGs at a fraction of their size) and
    needs no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def load_square(path, size):
    """Decode one file to `size`×`size` RGB bytes (H, W, 3 order).

    Returns (bytes, note): note is "" for an ordinary image, "upscaled" when the shorter side was
    below `size`, or, with bytes None, why the file was skipped.
    """
    try:
        img = open_image(path)
        with img:
            # JPEG: let the decoder shrink by 1/2, 1/4 or 1/8 while keeping both sides >= size
            # (several times faster on large photos; CelebA at 64 px decodes at 1/2).
            img.draft("RGB", (size, size))
            small = min(img.size) < size
            img = upright(img)
            img = resize_crop(to_rgb(img), size)
            data = img.tobytes()
    except Exception as err:  # noqa: BLE001 - any failure skips this one file, named in the summary
        return None, _reason(err)
    if len(data) != size * size * 3:
        return None, "decoded to the wrong size"
    return data, "upscaled" if small else ""


def _reason(err):
    if isinstance(err, Image.DecompressionBombError):
        return (
            f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, refused as a possible "
            "decompression bomb"
        )
    if isinstance(err, OSError) and err.strerror:  # e.g. a broken link, no permission
        return err.strerror
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "cannot identify image file" in text:
        return "not an image"
    return text[:80]
