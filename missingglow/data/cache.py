"""The image cache file: clean S×S RGB images decoded once, read back memory-mapped.

Layout of one cache file (format version 1):

    bytes [0, 4096)            b"MGLOWCACHE\\n" then a UTF-8 JSON header, padded with spaces
    bytes [4096, 4096 + N·S·S·3) the pixels, uint8, in (N, S, S, 3) order (RGB, row-major: as
                                Pillow's `tobytes()` gives them)
    then `trailer_bytes` bytes   UTF-8 JSON {"names": [...], "skipped": [[name, reason], ...]}

The header holds format_version, source, digest (of the source's file list), size (S), count (N),
trailer_bytes, grayscale (every image has R = G = B), and a few informative fields. A file is only
ever written under a temporary name in the same folder and renamed into place (`os.replace`), so a
reader sees a whole file or none; a file whose header or length does not match is never read
(`CacheMismatch` says why).
"""
import json
import os
import time

import torch

from ..atomic import WriteError, atomic_write
from ..errors import UserError

MAGIC = b"MGLOWCACHE\n"
FORMAT_VERSION = 1
HEADER_BYTES = 4096
SUFFIX = ".mgcache"


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
        header = json.loads(head[len(MAGIC):].decode("utf-8"))
    except ValueError:
        raise CacheMismatch("damaged (its header is not valid JSON)") from None
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheMismatch(f"from another format version ({version}, this version reads "
                            f"{FORMAT_VERSION})")
    try:
        n, s, t = int(header["count"]), int(header["size"]), int(header["trailer_bytes"])
    except (KeyError, TypeError, ValueError):
        raise CacheMismatch("damaged (its header lacks count, size or trailer_bytes)") from None
    expected = HEADER_BYTES + n * s * s * 3 + t
    if length != expected:
        what = "truncated" if length < expected else "longer than its header says"
        raise CacheMismatch(f"{what} ({length} bytes, expected {expected})")
    return header


class ImageCache:
    """A validated cache file, memory-mapped: `len(cache)`, `cache.images[i]` (S, S, 3) uint8.

    Pickles without its pixels (a DataLoader worker started by spawn maps the file again).
    """

    def __init__(self, path, header=None):
        self.path = os.fspath(path)
        self.header = read_header(self.path) if header is None else header
        self.size = int(self.header["size"])
        self.count = int(self.header["count"])
        self.source = self.header["source"]
        self._images = None
        self._trailer = None

    def __len__(self):
        return self.count

    @property
    def images(self):
        """All images as one uint8 tensor (N, S, S, 3), backed by the file (MAP_PRIVATE)."""
        if self._images is None:
            n, s = self.count, self.size
            total = HEADER_BYTES + n * s * s * 3
            if n == 0:
                self._images = torch.empty((0, s, s, 3), dtype=torch.uint8)
            else:
                flat = torch.from_file(self.path, shared=False, size=total, dtype=torch.uint8)
                self._images = flat[HEADER_BYTES:].view(n, s, s, 3)
        return self._images

    def _read_trailer(self):
        if self._trailer is None:
            with open(self.path, "rb") as f:
                f.seek(HEADER_BYTES + self.count * self.size * self.size * 3)
                self._trailer = json.loads(f.read().decode("utf-8"))
        return self._trailer

    @property
    def grayscale(self):
        """True when every image has R = G = B (a grey folder: training takes one channel).
        Caches written before this was recorded are scanned once."""
        if "grayscale" not in self.header:
            self.header["grayscale"] = self.count > 0 and all(
                bool((part[..., :1] == part[..., 1:]).all())
                for part in self.images.split(1024))
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


def write_cache(path, *, source, digest, size, items, extra=None):
    """Write a cache atomically from `items`: an iterable of (name, bytes or None, note).

    Items with bytes None are skipped and recorded with their note as the reason; a note
    "upscaled" on a kept item is counted in the header. Writes to a
    temporary file in the same folder and renames it into place, so two writers racing leave one
    whole file. Returns the opened ImageCache. An unwritable folder or a full disk is a UserError.
    """
    names, skipped, upscaled, grey = [], [], 0, True
    frame = size * size * 3
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
            grey = grey and data[0::3] == data[1::3] == data[2::3]
        trailer = json.dumps({"names": names, "skipped": skipped}).encode("utf-8")
        f.write(trailer)
        header.update({
            "format_version": FORMAT_VERSION,
            "source": source,
            "digest": digest,
            "size": size,
            "count": len(names),
            "layout": "N,S,S,3 uint8 RGB after a 4096-byte header",
            "trailer_bytes": len(trailer),
            "skipped": len(skipped),
            "upscaled": upscaled,
            "grayscale": bool(names) and grey,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        })
        head = MAGIC + json.dumps(header).encode("utf-8")
        if len(head) > HEADER_BYTES:
            raise ValueError("cache header longer than 4096 bytes")
        f.seek(0)
        f.write(head.ljust(HEADER_BYTES, b" "))

    try:
        atomic_write(path, write)
    except WriteError as err:
        raise UserError(f"cannot write the image cache {path} ({err.reason}); free some "
                        "space or pass --cache DIR / set MISSINGGLOW_CACHE to another folder"
                        ) from None
    return ImageCache(path, header)
