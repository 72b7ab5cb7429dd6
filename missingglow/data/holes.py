"""A folder's own holes (`train --data DIR --masks MASKS`), read once and cached beside its images.

MASKS is a folder of mask files, or the word `alpha` (a folder named alpha: write ./alpha).

Matching: the mask of the image DIR/REL/NAME.EXT is MASKS/REL/NAME.M, the same path relative to
its folder with any image extension M (png, bmp, webp, jpg, jpeg; any case): the mask folder
mirrors the image folder, so `a/b.jpg` ↔ `a/b.png`, and `b.jpg` ↔ `b.png` in a flat folder. Each
image needs exactly one; masks without an image (or of an image the cache skipped as unreadable)
are ignored.

What is missing: a mask pixel that is not zero (read as grey, as `impute --mask` reads it). A mask
may have any size with its image's shape (to within a pixel); it meets the model through the
images' resize and centre crop with a max over each model pixel's box, so a lone missing pixel
stays missing (data/images.py). With `alpha`: an image's pixels that are not fully opaque
(alpha < 255); an image without alpha, or fully opaque, has no hole. An image may have no hole (an
all-black mask); one whose every pixel is missing is refused.

One bad mask sinks the run (our choice): an image left without its mask would be trained as
complete, its hole's content learnt as data. The error names the first bad file, what to do, and
how many others are bad. A mask folder, or `alpha` on a folder, that marks no hole at all is
refused too: it would train on complete images while the run says it has holes.

The cache: data/cache.py's format with one byte a pixel (255 = missing; header `channels` 1, `kind`
"holes"), row i the hole of the image cache's image i, its names in the trailer, in the file
`<image cache>-holes-<key>.mgcache` beside the image cache (key: sha256 of MASKS' absolute path, or
of "alpha"). Its digest covers the image cache's digest, the rules below and the mask files' paths,
sizes and modification times: it is reused while all are unchanged and rebuilt in place when any
changes. Written and checked by the image cache's own code (atomic write, header and length checks,
a stale or truncated file rebuilt, a killed build's temp file removed).
"""

import hashlib
import os
import time

import torch

from ..errors import UserError
from ..progress import echo
from . import imagefolder
from .cache import SUFFIX, remove_abandoned, reusable, run_jobs, write_cache
from .images import alpha_mask, training_mask

ALPHA = "alpha"
ALPHA_BELOW = 255  # alpha below this is missing: any pixel that is not fully opaque
RULES = "holes-v1:nonzero,alpha<255,box-max"  # in the digest: new rules rebuild old hole caches
_EXTENSIONS = ", ".join(e[1:] for e in imagefolder.EXTENSIONS)


def open_holes(cache, masks, *, workers=None, quiet=True):
    """The holes that `masks` (a folder, or "alpha") gives `cache`'s images: a one-channel
    ImageCache aligned with `cache` (row i: image i, 255 = missing), built if missing or stale,
    else reused. A UserError naming the first bad file if any mask cannot be used."""
    say = (lambda msg: None) if quiet else echo
    root = _image_root(cache)
    spec, mask_root = _mask_source(masks)
    names, size = cache.names, cache.size
    if mask_root is None:
        items = [(ALPHA, n, os.path.join(root, n), None, size) for n in names]
        mask_digest, label = ALPHA, f"reading the alpha channels of {len(names)} images"
    else:
        matched = match_masks(names, mask_root, masks)
        items = [
            ("file", n, os.path.join(root, n), os.path.join(mask_root, m), size)
            for n, m in zip(names, matched, strict=True)
        ]
        mask_digest = imagefolder.file_list_digest(mask_root, matched)
        label = f"reading {len(names)} masks from {masks}"
    source = f"holes:{spec} of {cache.source}"
    key = f"{RULES}\n{cache.header.get('digest')}\n{len(names)}\n{mask_digest}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    path = holes_path(cache, spec)
    remove_abandoned(os.path.dirname(path), say)
    holes = reusable(path, source, digest, size, say, what="mask cache")
    if holes is not None and holes.channels == 1 and holes.names == names:
        return holes
    start = time.perf_counter()
    results = run_jobs(_read_hole, items, workers, None if quiet else label)
    holes = write_cache(
        path,
        source=source,
        digest=digest,
        size=size,
        items=_checked(results, masks, root),
        extra={"kind": "holes", "masks": spec, "images": cache.source, "rules": RULES},
        channels=1,
        what="mask cache",
    )
    say(_summary(holes, masks, time.perf_counter() - start))
    return holes


def holes_path(cache, spec):
    """Beside the image cache, one file per (image cache, MASKS): a changed mask folder rebuilds
    its file in place instead of leaving a stale one behind."""
    stem = cache.path[: -len(SUFFIX)] if cache.path.endswith(SUFFIX) else cache.path
    key = hashlib.sha256(spec.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{stem}-holes-{key}{SUFFIX}"


def match_masks(names, mask_root, shown):
    """The mask of each image name, as a path relative to `mask_root`: the image's relative path
    with any image extension. A UserError for an image with no mask or several."""
    found, _ = imagefolder.find_images(mask_root)
    if not found:
        raise UserError(
            f"no mask images ({_EXTENSIONS}) found in {shown}, searched recursively; --masks "
            "takes a folder that mirrors --data, one mask per image with the image's relative "
            "path (any image extension), or `alpha`"
        )
    by_stem = {}
    for rel in found:
        by_stem.setdefault(os.path.splitext(rel)[0], []).append(rel)
    matched, missing = [], []
    for name in names:
        candidates = by_stem.get(os.path.splitext(name)[0], [])
        if len(candidates) > 1:
            raise UserError(
                f"the image {name} has {len(candidates)} masks in {shown} "
                f"({', '.join(candidates)}); keep one"
            )
        if not candidates:
            missing.append(name)
        matched.append(candidates[0] if candidates else None)
    if missing:
        raise UserError(_no_mask(missing, names, shown))
    return matched


def _no_mask(missing, names, shown):
    first = missing[0]
    expected = os.path.join(shown, os.path.splitext(first)[0] + ".png")
    others = len(missing) - 1
    plural = "s lack" if others > 1 else " lacks"
    tail = f"; {others} other image{plural} one too (of {len(names)})" * (others > 0)
    return (
        f"no mask for the image {first}: expected {expected} (or another image extension: "
        f"{_EXTENSIONS}); give every image a mask, all black for none{tail}"
    )


def _image_root(cache):
    """The image folder behind `cache`: masks are read against its files."""
    if not cache.source.startswith("folder:"):
        raise UserError(
            f"--masks gives the holes of an image folder's images, and {cache.source} is not "
            "one; pass the folder with --data"
        )
    root = cache.source[len("folder:") :]
    if not os.path.isdir(root):
        raise UserError(
            f"the images of {cache.path} are no longer in {root}, and --masks reads them to "
            "place their holes; put them back or pass their folder with --data"
        )
    return root


def _mask_source(masks):
    """(the cache's name for MASKS, its absolute folder or None for `alpha`)."""
    if masks == ALPHA:
        return ALPHA, None
    root = imagefolder.folder_path(masks)
    if not os.path.exists(root):
        raise UserError(
            f"mask folder {masks} does not exist; pass --masks with a folder that mirrors "
            "--data (one mask per image, same relative path), or `alpha` for the images' "
            "transparency"
        )
    if not os.path.isdir(root):
        raise UserError(
            f"{masks} is a file; --masks takes a folder of masks (one per image, same relative "
            "path as the image) or `alpha`"
        )
    return f"folder:{root}", root


def _read_hole(item):
    """One image's hole → (name, S·S bytes with 255 = missing, "") or (name, None, what is
    wrong); a worker's job, so it never raises for a bad file."""
    kind, name, image_path, mask_path, size = item
    try:
        with imagefolder.open_image(image_path) as img:
            if kind == ALPHA:
                hole = alpha_mask(imagefolder.upright(img), size, image_path, ALPHA_BELOW)
            else:
                hole = training_mask(mask_path, imagefolder.upright_size(img), size)
    except UserError as err:
        return name, None, str(err)
    except Exception as err:  # noqa: BLE001 - the image went into the cache; now it cannot be read
        return (
            name,
            None,
            (
                f"cannot read {image_path} to place its hole ({type(err).__name__}); fix or remove "
                "it and run again"
            ),
        )
    if hole is None:
        return name, bytes(size * size), ""
    return name, bytes(hole.to(torch.uint8).mul_(255).flatten().tolist()), ""


def _checked(results, masks, root):
    """The items to cache; at the end a UserError (and no file) if any was bad or none has a
    hole."""
    bad, holed, count = [], 0, 0
    for name, data, problem in results:
        count += 1
        if data is None:
            bad.append(problem)
            continue
        holed += data.count(255) > 0
        yield name, data, ""
    if bad:
        others = len(bad) - 1
        more = f" (and {others} more bad mask{'s' if others > 1 else ''} of {count})" * (others > 0)
        raise UserError(bad[0] + more)
    if not holed:
        raise UserError(_no_holes(masks, root, count))


def _no_holes(masks, root, count):
    if masks == ALPHA:
        return (
            f"none of the {count} images in {root} has transparent pixels, so --masks alpha "
            "gives them no holes; save the images with their holes transparent (PNG with "
            "alpha), or pass a folder of masks"
        )
    return (
        f"none of the {count} masks in {masks} marks a pixel as missing (non-zero); draw the "
        "holes in white on black, or drop --masks to train on grey squares"
    )


def _summary(holes, masks, seconds):
    flat = holes.images.view(holes.count, -1)
    holed = int(flat.any(1).sum())
    share = 100 * float(flat.ne(0).sum()) / max(1, flat.numel())
    where = "their alpha channels" if masks == ALPHA else masks
    return (
        f"prepared the holes of {holes.count} images from {where} in {seconds:.1f} s: "
        f"{holed} have one, {share:.1f} % of pixels missing; into {holes.path}"
    )
