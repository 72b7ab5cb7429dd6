"""Seeds as pure functions of their parts: the same in every run, process and platform.

Training (batch order, noise, sample grids) and analysis (samples per temperature, evaluation
noise) name what they draw, e.g. generator(seed, "noise", iteration), so nothing depends on a
global RNG or on how many draws happened before.
"""

import hashlib

import torch


def seed_for(*parts):
    """A 63-bit seed from any parts."""
    digest = hashlib.sha256(":".join(map(str, ("missingglow",) + parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def generator(*parts):
    """A CPU torch.Generator seeded by seed_for(*parts)."""
    return torch.Generator().manual_seed(seed_for(*parts))
