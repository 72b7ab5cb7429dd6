"""The image cache: where it lives, when it is reused or rebuilt, and its file format.

`open_dataset` is the one door: it builds the cache of an image folder (or of the synthetic faces)
on first use, decoding on all cores with a progress bar, and reuses it while it is whole and its
sources are unchanged.

Layout of one cache file (format version 1):

    bytes [0, 4096)            b"MGLOWCACHE\\n" then a UTF-8 JSON header, padded with spaces
    bytes [4096, 4096 + N·S·S·C) the pixels, uint8, in (N, S, S, C) order (C = 3: RGB, row-major:
                                as Pillow's `tobytes()` gives them)
    then `trailer_bytes` bytes   UTF-8 JSON {"names": [...], "skipped": [[name, reason], ...]}

The header holds format_version, source, digest (of the source's file list), size (S), count (N),
trailer_bytes, grayscale (every image has R = G = B), channels (C; 3 when absent: caches written
before it), and a few informative fields. The same format with C = 1 holds a folder's own holes
beside its image cache (data/holes.py, `kind` "holes"), checked and reused by the same code.

A file is only ever written under a temporary name in the same folder and renamed into place
(`os.replace`), so a reader sees a whole file or none; a file whose header or length does not match
is never read (`CacheMismatch` says why). The temporary file of a build that was killed is removed
by the next `open_dataset` on that folder once its writer is gone (atomic.py).
"""

import hashlib
import json
import multiprocessing
import os
import re
import sys
import time

import torch

from ..atomic import WriteError, atomic_write, remove_abandoned_temp_files
from ..errors import UserError
from ..progress import echo, progress_bar
from . import imagefolder, synthetic

MAGIC = b"MGLOWCACHE\n"
FORMAT_VERSION = 1
HEADER_BYTES = 4096
SUFFIX = ".mgcache"
SYNTHETIC_COUNT = 10_000
_SERIAL_BELOW = 256  # fewer items than this decode in-process (a worker pool costs more)


class CacheMismatch(Exception):
    """A cache file that must not be read: missing, truncated, another format, other sources."""


def read_header(path):
    """The JSON header of a cache file, checked against the file's length. Raises CacheMismatch."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
            length = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise CacheMismatch("missing") from None
    except OSError as err:
        raise CacheMismatch(f"unreadable ({err.strerror or err})") from None
    if not head.startswith(MAGIC):
        raise CacheMismatch("not a missingglow cache file")
    if len(head) < HEADER_BYTES:
        raise CacheMismatch("truncated (shorter than its header)")
    try:
        header = json.loads(head[len(MAGIC) :].decode("utf-8"))
    except ValueError:
        raise CacheMismatch("damaged (its header is not valid JSON)") from None
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheMismatch(
            f"from another format version ({version}, this version reads {FORMAT_VERSION})"
        )
    try:
        n, s, t = int(header["count"]), int(header["size"]), int(header["trailer_bytes"])
    except (KeyError, TypeError, ValueError):
        raise CacheMismatch("damaged (its header lacks count, size or trailer_bytes)") from None
    expected = HEADER_BYTES + n * s * s * _channels(header) + t
    if length != expected:
        what = "truncated" if length < expected else "longer than its header says"
        raise CacheMismatch(f"{what} ({length} bytes, expected {expected})")
    return header


def _channels(header):
    """Bytes per pixel: 3 (RGB) unless the header says otherwise (a hole cache's 1)."""
    try:
        return int(header.get("channels", 3))
    except (TypeError, ValueError):
        raise CacheMismatch("damaged (its channels is not a number)") from None


class ImageCache:
    """A validated cache file, memory-mapped: `len(cache)`, `cache.images[i]` (S, S, C) uint8
    (C = `cache.channels`: 3, or 1 for a hole cache).

    Pickles without its pixels (a DataLoader worker started by spawn maps the file again).
    """

    def __init__(self, path, header=None):
        self.path = os.fspath(path)
        self.header = read_header(self.path) if header is None else header
        self.size = int(self.header["size"])
        self.count = int(self.header["count"])
        self.channels = _channels(self.header)
        self.source = self.header["source"]
        self._images = None
        self._trailer = None

    def __len__(self):
        return self.count

    @property
    def images(self):
        """All images as one uint8 tensor (N, S, S, C), backed by the file (MAP_PRIVATE)."""
        if self._images is None:
            n, s, c = self.count, self.size, self.channels
            total = HEADER_BYTES + n * s * s * c
            if n == 0:
                self._images = torch.empty((0, s, s, c), dtype=torch.uint8)
            else:
                flat = torch.from_file(self.path, shared=False, size=total, dtype=torch.uint8)
                self._images = flat[HEADER_BYTES:].view(n, s, s, c)
        return self._images

    def _read_trailer(self):
        if self._trailer is None:
            with open(self.path, "rb") as f:
                f.seek(HEADER_BYTES + self.count * self.size * self.size * self.channels)
                self._trailer = json.loads(f.read().decode("utf-8"))
        return self._trailer

    @property
    def grayscale(self):
        """True when every image has R = G = B (a grey folder: training takes one channel).
        Caches written before this was recorded are scanned once."""
        if "grayscale" not in self.header:
            self.header["grayscale"] = self.count > 0 and all(
                bool((part[..., :1] == part[..., 1:]).all()) for part in self.images.split(1024)
            )
        return bool(self.header["grayscale"])

    @property
    def names(self):
        """The name of each image (relative path in its folder, or `synthetic/000123`)."""
        return self._read_trailer()["names"]

    @property
    def skipped(self):
        """[(relative path, reason)] of the source files that could not be used."""
        return [tuple(x) for x in self._read_trailer()["skipped"]]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_images"] = None
        state["_trailer"] = None
        return state

    def __repr__(self):
        return f"ImageCache({self.path!r}, count={self.count}, size={self.size})"


def write_cache(path, *, source, digest, size, items, extra=None, channels=3, what="image cache"):
    """Write a cache atomically from `items`: an iterable of (name, bytes or None, note), each
    item S·S·`channels` bytes. An exception raised by `items` leaves no file behind.

    Items with bytes None are skipped and recorded with their note as the reason; a note
    "upscaled" on a kept item is counted in the header. Writes to a
    temporary file in the same folder and renames it into place, so two writers racing leave one
    whole file. Returns the opened ImageCache. An unwritable folder or a full disk is a UserError.
    """
    names, skipped, upscaled, grey = [], [], 0, True
    frame = size * size * channels
    header = {}

    def write(f):
        nonlocal upscaled, grey
        f.write(b"\0" * HEADER_BYTES)
        for name, data, note in items:
            if data is None:
                skipped.append([name, note])
                continue
            if len(data) != frame:
                raise ValueError(f"{name}: {len(data)} bytes, expected {frame}")
            f.write(data)
            names.append(name)
            upscaled += note == "upscaled"
            grey = grey and channels == 3 and data[0::3] == data[1::3] == data[2::3]
        trailer = json.dumps({"names": names, "skipped": skipped}).encode("utf-8")
        f.write(trailer)
        header.update(
            {
                "format_version": FORMAT_VERSION,
                "source": source,
                "digest": digest,
                "size": size,
                "count": len(names),
                "layout": f"N,S,S,{channels} uint8{' RGB' * (channels == 3)} after a 4096-byte "
                "header",
                "channels": channels,
                "trailer_bytes": len(trailer),
                "skipped": len(skipped),
                "upscaled": upscaled,
                "grayscale": bool(names) and grey,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra or {}),
            }
        )
        head = MAGIC + json.dumps(header).encode("utf-8")
        if len(head) > HEADER_BYTES:
            raise ValueError("cache header longer than 4096 bytes")
        f.seek(0)
        f.write(head.ljust(HEADER_BYTES, b" "))

    try:
        atomic_write(path, write)
    except WriteError as err:
        raise UserError(
            f"cannot write the {what} {path} ({err.reason}); free some "
            "space or pass --cache DIR / set MISSINGGLOW_CACHE to another folder"
        ) from None
    return ImageCache(path, header)


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
        slug = os.path.basename(source[len("folder:") :].rstrip("/")) or "root"
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
        raise UserError(
            f"the image cache {path} is {why}; delete it and run `missingglow prepare "
            "--data DIR --size S` to rebuild it"
        ) from None


def open_dataset(
    data=None,
    size=64,
    *,
    cache_dir=None,
    workers=None,
    rebuild=False,
    synthetic_count=SYNTHETIC_COUNT,
    synthetic_seed=0,
    synthetic_detail="full",
    quiet=False,
):
    """The cache of `data` (an image folder, a `.mgcache` file, or None for the synthetic faces)
    at `size`×`size`, built if missing or stale, else reused at once. Returns an ImageCache.

    Messages (a progress bar while building, one summary line) go to stderr unless `quiet`.
    `workers`: decoding processes (default: the cores this process may use).
    """
    if not isinstance(size, int) or size < 1:
        raise UserError(f"image size must be a positive whole number of pixels, not {size!r}")
    if data is not None and os.path.isfile(data) and str(data).endswith(SUFFIX):
        cache = open_cache(data)
        if cache.channels != 3:
            raise UserError(
                f"{data} holds an image folder's holes, not its images; pass the image cache "
                "(or the image folder) with --data and the holes with --masks"
            )
        if cache.size != size:
            raise UserError(
                f"the image cache {data} holds {cache.size}-pixel images, not {size}; "
                f"pass --size {cache.size} or the image folder instead"
            )
        return cache
    say = (lambda msg: None) if quiet else echo
    if data is None:
        if synthetic_count < 1:
            raise UserError(f"the synthetic set needs at least 1 image, not {synthetic_count}")
        if synthetic_detail not in synthetic.DETAILS:
            raise UserError(
                f"synthetic detail must be {' or '.join(synthetic.DETAILS)}, "
                f"not {synthetic_detail!r}"
            )
        source = synthetic_source(synthetic_seed, synthetic_count, synthetic_detail)
        digest = hashlib.sha256(source.encode()).hexdigest()
        items = [(synthetic_seed, i, size, synthetic_detail) for i in range(synthetic_count)]
        detail = " low-detail" if synthetic_detail == "low" else ""
        job, what = synthetic.face_bytes, f"drawing {synthetic_count}{detail} synthetic faces"
    else:
        root = imagefolder.folder_path(data)
        if not os.path.exists(root):
            raise UserError(
                f"image folder {data} does not exist; pass --data with a folder of "
                "images, or leave it out to use the synthetic faces"
            )
        if not os.path.isdir(root):
            raise UserError(
                f"{data} is a file, not a folder; pass --data with a folder of images "
                f"(or a {SUFFIX} cache file)"
            )
        names, ignored = imagefolder.find_images(root)
        if not names:
            what = f"{ignored} other files ignored" if ignored else "the folder is empty"
            raise UserError(
                f"no images ({', '.join(e[1:] for e in imagefolder.EXTENSIONS)}) found "
                f"in {data}, searched recursively ({what}); pass --data with a folder "
                "of images"
            )
        source = f"folder:{root}"
        digest = imagefolder.file_list_digest(root, names)
        items = [(root, name, size) for name in names]
        job, what = _decode_item, f"decoding {len(names)} images from {data}"

    path = cache_path(source, size, cache_dir)
    remove_abandoned(os.path.dirname(path), say)
    cache = None if rebuild else reusable(path, source, digest, size, say)
    if cache is not None:
        return cache
    start = time.perf_counter()
    results = run_jobs(job, items, workers, what if not quiet else None)
    extra = {"pillow": _pillow_version(), "workers": _workers(workers, len(items))}
    cache = write_cache(path, source=source, digest=digest, size=size, items=results, extra=extra)
    say(_summary(cache, len(items), time.perf_counter() - start, path))
    if cache.count == 0:
        raise UserError(
            f"none of the {len(items)} image files in {data} could be read; "
            "see the line above for why"
        )
    return cache


def reusable(path, source, digest, size, say, what="image cache"):
    """The cache at `path` if it is whole and made from these sources, else None (and why)."""
    try:
        header = read_header(path)
        if (header.get("source"), header.get("digest"), header.get("size")) != (
            source,
            digest,
            size,
        ):
            raise CacheMismatch("for other source files (the folder changed since it was built)")
    except CacheMismatch as why:
        if str(why) != "missing":
            say(f"the {what} {path} is {why}; rebuilding it")
        return None
    cache = ImageCache(path, header)
    skipped = f" ({header['skipped']} source files were skipped)" if header.get("skipped") else ""
    say(f"using the {what} {path}: {cache.count} images, {size}×{size}{skipped}")
    return cache


def remove_abandoned(folder, say):
    """A build killed mid-way leaves a temp file as large as the cache: take back the space of
    every build whose writer is gone (a concurrent build keeps its file)."""
    removed = remove_abandoned_temp_files(folder)
    if removed:
        megabytes = sum(size for _, size in removed) / 1e6
        say(
            f"removed {len(removed)} temporary files ({megabytes:.1f} MB) left in {folder} by "
            "interrupted builds"
        )


def _decode_item(args):
    root, name, size = args
    data, note = imagefolder.load_square(os.path.join(root, name), size)
    return name, data, note


def _workers(workers, n):
    if workers is None:
        affinity = getattr(os, "sched_getaffinity", None)
        workers = len(affinity(0)) if affinity else os.cpu_count()
    return max(1, min(int(workers or 1), n)) if n >= _SERIAL_BELOW else 1


def run_jobs(job, items, workers, label):
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
    line = (
        f"prepared {cache.count} images, {cache.size}×{cache.size}, in {seconds:.1f} s "
        f"({rate:.0f} images/s) into {path}"
    )
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
