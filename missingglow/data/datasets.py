"""Masked datasets (docs/conventions.md §3): the held-out split and masked images from a cache.

    cache = open_dataset("img_align_celeba/", size=64)      # data/cache.py; None: synthetic faces
    train = MaskedImages(cache, square=20, count=1, seed=0, split="train")
    masked, clean, positions = train[0]                     # (3,S,S), (3,S,S) in [0,1]; (count,2)

Squares come from (seed, i) (see `masks`), so any square size and count reads the same cache.
A folder's own holes (`train --masks`: mask files or the images' alpha) come from a second cache
beside the image cache (`holes`); `masked_images_of` builds whichever a run's config names.
The held-out split depends only on the image names and `split_seed`, not on the training seed:
every run holds out the same images.
"""

import hashlib

import torch

from ..errors import UserError
from .cache import SYNTHETIC_COUNT, open_dataset
from .holes import open_holes
from .masks import GREY, apply_squares, check_squares, square_mask, square_positions

HELDOUT_FRACTION = 0.05
MIN_HELDOUT = 16


def dataset_of(config, size=None, quiet=True):
    """The dataset a training config names (its image folder, or its synthetic faces)."""
    return open_dataset(
        config.get("data"),
        size or config["image_size"],
        synthetic_count=config.get("synthetic_count", SYNTHETIC_COUNT),
        synthetic_detail=config.get("synthetic_detail", "full"),
        quiet=quiet,
    )


def masked_images_of(config, cache, split, quiet=True, holes=None):
    """The MaskedImages of `split` that a run's config (a plain dict) describes: its folder's own
    holes when it names `masks` (their cache built on first use), else its grey squares. `holes`:
    that folder's holes already open (another split's `.holes`), so the folder is walked once."""
    seed = config.get("seed", 0)
    if config.get("masks") is None:
        return MaskedImages(cache, config["square"], config.get("squares", 1), seed, split)
    if holes is None:
        holes = open_holes(cache, config["masks"], quiet=quiet)
    return MaskedImages(cache, 0, 0, seed, split, holes=holes)


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
    keys = [
        hashlib.sha256(f"{split_seed}:{name}".encode("utf-8", "surrogateescape")).digest()
        for name in names
    ]
    return sorted(sorted(range(n), key=keys.__getitem__)[:k])


class MaskedImages(torch.utils.data.Dataset):
    """Images of one split with their holes: item j is (masked, clean, positions).

    masked, clean: float32 (3, S, S) in [0, 1]; masked equals clean outside the holes and `fill`
    (default 128/255) inside. The holes are grey squares, or with `holes` (data/holes.py: a
    one-channel cache aligned with `cache`, 255 = missing) the folder's own, and then no squares.
    positions: int64 (count, 2) of (top, left), (0, 2) when square or count is 0 or with `holes`.
    The squares of image i (its index in the cache, `self.indices[j]`) depend only on
    (seed, i, square, count, S); squares of one image may overlap.

    split: "train" (never the held-out images), "heldout", or "all".
    """

    def __init__(
        self,
        cache,
        square=0,
        count=1,
        seed=0,
        split="train",
        heldout_fraction=HELDOUT_FRACTION,
        split_seed=0,
        fill=GREY,
        holes=None,
    ):
        check_squares(square, count, cache.size)
        if holes is not None and (square and count or holes.count != len(cache)):
            raise ValueError("holes replace squares and must have a row per image of the cache")
        self.holes = holes
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
            raise UserError(
                f"the {split} split of {cache.source} is empty ({len(cache)} images); "
                "use a folder with more images"
            )

    def __len__(self):
        return len(self.indices)

    def positions(self, j):
        """Squares of item j: int64 (count, 2) of (top, left)."""
        i, s = self.indices[j], self.cache.size
        return square_positions(self.seed, i, self.square, self.count, s)

    def missing(self, js):
        """Where items js have holes: bool (B, 1, S, S), True on a missing pixel."""
        s = self.cache.size
        if not len(js):
            return torch.zeros((0, 1, s, s), dtype=torch.bool)
        if self.holes is not None:
            rows = torch.as_tensor([self.indices[j] for j in js], dtype=torch.int64)
            return self.holes.images.index_select(0, rows).permute(0, 3, 1, 2).ne(0)
        return torch.stack([square_mask(self.positions(j), self.square, s) for j in js])

    def clean(self, j):
        """Image j without its holes (as stored): float32 (3, S, S) in [0, 1], contiguous."""
        s, pixels = self.cache.size, self.cache.images[self.indices[j]]
        return torch.empty((3, s, s)).copy_(pixels.permute(2, 0, 1)).div_(255)

    def __getitem__(self, j):
        clean = self.clean(j)
        positions = self.positions(j)
        if self.holes is not None:
            return clean.masked_fill(self.missing([j])[0], self.fill), clean, positions
        return apply_squares(clean, positions, self.square, self.fill), clean, positions

    def clean_batch(self, js):
        """Items js without their holes (as stored): float32 (B, 3, S, S) in [0, 1]."""
        rows = torch.as_tensor([self.indices[j] for j in js], dtype=torch.int64)
        pixels = self.cache.images.index_select(0, rows)  # (B, S, S, 3) uint8
        clean = torch.empty((len(rows), 3, self.cache.size, self.cache.size))
        return clean.copy_(pixels.permute(0, 3, 1, 2)).div_(255)

    def batch(self, js):
        """Items js stacked: (masked (B,3,S,S), clean (B,3,S,S), positions (B,count,2)).

        Faster than a DataLoader over __getitem__ for direct use: one gather from the cache."""
        clean = self.clean_batch(js)
        if self.holes is not None:
            positions = torch.zeros((len(js), 0, 2), dtype=torch.int64)
            return clean.masked_fill(self.missing(js), self.fill), clean, positions
        positions = (
            torch.stack([self.positions(j) for j in js])
            if len(js)
            else torch.zeros((0, 0, 2), dtype=torch.int64)
        )
        masked = clean.clone()
        k = self.square
        for b, pos in enumerate(positions.tolist()):
            for top, left in pos:
                masked[b, :, top : top + k, left : left + k] = self.fill
        return masked, clean, positions
