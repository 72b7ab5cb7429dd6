"""Keep freed heap memory in the process while training (glibc only; elsewhere a no-op).

glibc hands large freed blocks back to the system: a training step frees its ~130 MB of
activations after the backward and takes them again in the next forward, paying ~24,000 minor page
faults per step at the small preset (bench/RESULTS.md). Keeping them made whole training
iterations 3–8 % faster on our 2-core CPU, fused and reference alike (bench/train_speed.py). The
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
