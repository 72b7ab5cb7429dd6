"""Keep freed heap memory in the process while training (glibc only; elsewhere a no-op).

glibc hands large freed blocks back to the system: a training step frees its activations after
the backward and takes them again in the next forward, paying a minor page fault for every page
of them, every step. Keeping the memory in the process saves those faults, for the fused and the
reference model alike (bench/train_speed.py measures it; bench/RESULTS.md has the numbers). The
cost: the process keeps its peak heap until it exits, which a training run reaches every step.
"""

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_below=32 * 2**20):
    """Never trim the heap, and serve blocks under `mmap_below` bytes from it; True if applied."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_MMAP_THRESHOLD, mmap_below))
