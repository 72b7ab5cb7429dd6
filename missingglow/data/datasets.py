"""Masked datasets (docs/conventions.md §3): open or build the image cache, split it, hand out
masked images.

    cache = open_dataset("img_align_celeba/", size=64)      # or None: the synthetic faces
    train = MaskedImages(cache, square=20, count=1, seed=0, split="train")
    masked, clean, positions = train[0]                     # (3,S,S), (3,S,S) in [0,1]; (count,2)

`open_dataset` builds the cache on first use (decoding on all cores, with a progress bar) and
reuses it afterwards. Squares come from (seed, i) (see `masks`), so any square size and count reads
the same cache. The held-out split depends only on the image names and `split_seed`, not on the
training seed: every run holds out the same images.
"""
import hashlib
import multiprocessing
import os
import re
import sys
import time

import torch

from ..errors import UserError
from ..progress import echo, progress_bar
from . import imagefolder, synthetic
from .cache import SUFFIX, CacheMismatch, ImageCache, read_header, write_cache
from .masks import GREY, apply_squares, check_squares, square_mask, square_positions

__all__ = ["open_dataset", "dataset_of", "open_cache", "cache_path", "default_cache_dir",
           "heldout_indices", "MaskedImages", "square_positions", "square_mask", "GREY"]

SYNTHETIC_COUNT = 10_000
HELDOUT_FRACTION = 0.05
MIN_HELDOUT = 16
_SERIAL_BELOW = 256  # fewer items than this decode in-process (a worker pool costs more)


def default_cache_dir():
    """$MISSINGGLOW_CACHE, else $XDG_CACHE_HOME/missingglow, else ~/.cache/missingglow."""
    if os.environ.get("MISSINGGLOW_CACHE"):
        return os.environ["MISSINGGLOW_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "missingglow")


def synthetic_source(seed, count, detail="full"):
    low = f",detail={detail}" if detail != "full" else ""  # full detail keeps its old caches
    return f"synthetic:seed={seed},n={count}{low},v={synthetic.VERSION}"


def cache_path(source, size, cache_dir=None):
    """Where the cache of `source` at `size` lives: one file per (source, size).

    A cache whose file list digest no longer matches its folder is rebuilt in place, so a changed
    folder does not leave stale multi-gigabyte files behind.
    """
    if source.startswith("folder:"):
        slug = os.path.basename(source[len("folder:"):].rstrip("/")) or "root"
    else:
        slug = source.split(",v=")[0].replace(":", "-").replace(",", "-").replace("=", "")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", slug)[:40]
    key = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return os.path.join(cache_dir or default_cache_dir(), f"{slug}-{size}px-{key}{SUFFIX}")


def open_cache(path):
    """Open an existing cache file; a UserError that says how to rebuild it if it cannot be read."""
    try:
        return ImageCache(path)
    except CacheMismatch as why:
        raise UserError(f"the image cache {path} is {why}; delete it and run `missingglow prepare "
                        "--data DIR --size S` to rebuild it") from None


def open_dataset(data=None, size=64, *, cache_dir=None, workers=None, rebuild=False,
                 synthetic_count=SYNTHETIC_COUNT, synthetic_seed=0, synthetic_detail="full",
                 quiet=False):
    """The cache of `data` (an image folder, a `.mgcache` file, or None for the synthetic faces)
    at `size`×`size`, built if missing or stale, else reused at once. Returns an ImageCache.

    Messages (a progress bar while building, one summary line) go to stderr unless `quiet`.
    `workers`: decoding processes (default: the cores this process may use).
    """
    if not isinstance(size, int) or size < 1:
        raise UserError(f"image size must be a positive whole number of pixels, not {size!r}")
    if data is not None and os.path.isfile(data) and str(data).endswith(SUFFIX):
        cache = open_cache(data)
        if cache.size != size:
            raise UserError(f"the image cache {data} holds {cache.size}-pixel images, not {size}; "
                            f"pass --size {cache.size} or the image folder instead")
        return cache
    say = (lambda msg: None) if quiet else echo
    if data is None:
        if synthetic_count < 1:
            raise UserError(f"the synthetic set needs at least 1 image, not {synthetic_count}")
        if synthetic_detail not in synthetic.DETAILS:
            raise UserError(f"synthetic detail must be {' or '.join(synthetic.DETAILS)}, "
                            f"not {synthetic_detail!r}")
        source = synthetic_source(synthetic_seed, synthetic_count, synthetic_detail)
        digest = hashlib.sha256(source.encode()).hexdigest()
        items = [(synthetic_seed, i, size, synthetic_detail) for i in range(synthetic_count)]
        detail = " low-detail" if synthetic_detail == "low" else ""
        job, what = synthetic.face_bytes, f"drawing {synthetic_count}{detail} synthetic faces"
    else:
        root = os.path.abspath(os.path.expanduser(os.fspath(data)))
        if not os.path.exists(root):
            raise UserError(f"image folder {data} does not exist; pass --data with a folder of "
                            "images, or leave it out to use the synthetic faces")
        if not os.path.isdir(root):
            raise UserError(f"{data} is a file, not a folder; pass --data with a folder of images "
                            f"(or a {SUFFIX} cache file)")
        names, ignored = imagefolder.find_images(root)
        if not names:
            what = f"{ignored} other files ignored" if ignored else "the folder is empty"
            raise UserError(f"no images ({', '.join(e[1:] for e in imagefolder.EXTENSIONS)}) found "
                            f"in {data}, searched recursively ({what}); pass --data with a folder "
                            "of images")
        source = f"folder:{root}"
        digest = imagefolder.file_list_digest(root, names)
        items = [(root, name, size) for name in names]
        job, what = _decode_item, f"decoding {len(names)} images from {data}"

    path = cache_path(source, size, cache_dir)
    cache = None if rebuild else _reusable(path, source, digest, size, say)
    if cache is not None:
        return cache
    start = time.perf_counter()
    results = _run(job, items, workers, what if not quiet else None)
    extra = {"pillow": _pillow_version(), "workers": _workers(workers, len(items))}
    cache = write_cache(path, source=source, digest=digest, size=size, items=results, extra=extra)
    say(_summary(cache, len(items), time.perf_counter() - start, path))
    if cache.count == 0:
        raise UserError(f"none of the {len(items)} image files in {data} could be read; "
                        "see the line above for why")
    return cache


def dataset_of(config, size=None, quiet=True):
    """The dataset a training config names (its image folder, or its synthetic faces)."""
    return open_dataset(config.get("data"), size or config["image_size"],
                        synthetic_count=config.get("synthetic_count", SYNTHETIC_COUNT),
                        synthetic_detail=config.get("synthetic_detail", "full"), quiet=quiet)


def _reusable(path, source, digest, size, say):
    """The cache at `path` if it is whole and made from these sources, else None (and why)."""
    try:
        header = read_header(path)
        if (header.get("source"), header.get("digest"), header.get("size")) != (source, digest,
                                                                               size):
            raise CacheMismatch("for other source files (the folder changed since it was built)")
    except CacheMismatch as why:
        if str(why) != "missing":
            say(f"the image cache {path} is {why}; rebuilding it")
        return None
    cache = ImageCache(path, header)
    skipped = f" ({header['skipped']} source files were skipped)" if header.get("skipped") else ""
    say(f"using the image cache {path}: {cache.count} images, {size}×{size}{skipped}")
    return cache


def _decode_item(args):
    root, name, size = args
    data, note = imagefolder.load_square(os.path.join(root, name), size)
    return name, data, note


def _workers(workers, n):
    if workers is None:
        affinity = getattr(os, "sched_getaffinity", None)
        workers = len(affinity(0)) if affinity else os.cpu_count()
    return max(1, min(int(workers or 1), n)) if n >= _SERIAL_BELOW else 1


def _run(job, items, workers, label):
    """Yield job(item) in order, on a pool of processes when worth it, with a progress bar."""
    n_workers = _workers(workers, len(items))
    with progress_bar(len(items), label, show=bool(label)) as bar:
        if n_workers == 1:
            for item in items:
                yield job(item)
                if bar is not None:
                    bar.update(1)
            return
        # fork keeps workers cheap (they run Pillow only); elsewhere the platform's default
        fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if fork else None)
        chunk = max(1, min(256, len(items) // (n_workers * 16)))
        with ctx.Pool(n_workers) as pool:
            for result in pool.imap(job, items, chunksize=chunk):
                yield result
                if bar is not None:
                    bar.update(1)


def _summary(cache, n_items, seconds, path):
    rate = n_items / seconds if seconds > 0 else float("inf")
    line = (f"prepared {cache.count} images, {cache.size}×{cache.size}, in {seconds:.1f} s "
            f"({rate:.0f} images/s) into {path}")
    skipped = cache.skipped
    if skipped:
        shown = ", ".join(f"{name} ({why})" for name, why in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        line += f"; skipped {len(skipped)} unreadable files: {shown}{more}"
    upscaled = cache.header.get("upscaled")
    if upscaled:
        line += f"; {upscaled} smaller than {cache.size} px were upscaled"
    return line


def _pillow_version():
    import PIL
    return PIL.__version__


def heldout_indices(names, fraction=HELDOUT_FRACTION, split_seed=0, minimum=MIN_HELDOUT):
    """Sorted indices of the held-out images: the round(fraction·N) names (but at least
    min(minimum, N // 2)) with the smallest sha256("{split_seed}:{name}").

    Depends on the names, not on their order or on the training seed: adding one image to a folder
    changes the held-out set by at most one image.
    """
    n = len(names)
    k = min(n // 2 if n > 1 else 0, max(round(fraction * n), min(minimum, n // 2)))
    if fraction <= 0:
        k = 0
    keys = [hashlib.sha256(f"{split_seed}:{name}".encode("utf-8", "surrogateescape")).digest()
            for name in names]
    return sorted(sorted(range(n), key=keys.__getitem__)[:k])


class MaskedImages(torch.utils.data.Dataset):
    """Images of one split with their grey squares: item j is (masked, clean, positions).

    masked, clean: float32 (3, S, S) in [0, 1]; masked equals clean outside the squares and `fill`
    (default 128/255) inside. positions: int64 (count, 2) of (top, left), (0, 2) when square or
    count is 0. The squares of image i (its index in the cache, `self.indices[j]`) depend only on
    (seed, i, square, count, S); squares of one image may overlap.

    split: "train" (never the held-out images), "heldout", or "all".
    """

    def __init__(self, cache, square=0, count=1, seed=0, split="train",
                 heldout_fraction=HELDOUT_FRACTION, split_seed=0, fill=GREY):
        check_squares(square, count, cache.size)
        if split not in ("train", "heldout", "all"):
            raise UserError(f"split must be train, heldout or all, not {split!r}")
        self.cache, self.square, self.count, self.seed, self.fill = cache, square, count, seed, fill
        self.split = split
        if split == "all":
            self.indices = list(range(len(cache)))
        else:
            held = heldout_indices(cache.names, heldout_fraction, split_seed)
            if split == "heldout":
                self.indices = held
            else:
                held_set = set(held)
                self.indices = [i for i in range(len(cache)) if i not in held_set]
        if not self.indices:
            raise UserError(f"the {split} split of {cache.source} is empty ({len(cache)} images); "
                            "use a folder with more images")

    def __len__(self):
        return len(self.indices)

    def positions(self, j):
        """Squares of item j: int64 (count, 2) of (top, left)."""
        i, s = self.indices[j], self.cache.size
        return square_positions(self.seed, i, self.square, self.count, s)

    def clean(self, j):
        """Image j without squares: float32 (3, S, S) in [0, 1], contiguous."""
        s, pixels = self.cache.size, self.cache.images[self.indices[j]]
        return torch.empty((3, s, s)).copy_(pixels.permute(2, 0, 1)).div_(255)

    def __getitem__(self, j):
        clean = self.clean(j)
        positions = self.positions(j)
        return apply_squares(clean, positions, self.square, self.fill), clean, positions

    def batch(self, js):
        """Items js stacked: (masked (B,3,S,S), clean (B,3,S,S), positions (B,count,2)).

        Faster than a DataLoader over __getitem__ for direct use: one gather from the cache."""
        rows = torch.as_tensor([self.indices[j] for j in js], dtype=torch.int64)
        pixels = self.cache.images.index_select(0, rows)  # (B, S, S, 3) uint8
        clean = torch.empty((len(rows), 3, self.cache.size, self.cache.size))
        clean.copy_(pixels.permute(0, 3, 1, 2)).div_(255)
        positions = torch.stack([self.positions(j) for j in js]) if len(js) else \
            torch.zeros((0, 0, 2), dtype=torch.int64)
        masked = clean.clone()
        k = self.square
        for b, pos in enumerate(positions.tolist()):
            for top, left in pos:
                masked[b, :, top:top + k, left:left + k] = self.fill
        return masked, clean, positions
