"""What makes the host wait for the device, as a profiler saw it: the sync-like ops of a trace.

A scalar read (`.item()`, `bool(t)`, `float(t)`) ends in `aten::_local_scalar_dense`; `nonzero`,
`equal`, `unique` and `masked_select` must read the device to size their answer. On a CPU these
wait for nothing, but they are where a step on a GPU would stop, so the CPU's count predicts the
GPU's. Ops called from inside other ops (the compiled `_C` ops' own ATen calls included) are in
the trace; a sync-like op inside another (`item` calls `_local_scalar_dense`) counts once.
"""

from collections import Counter

SYNC_OPS = (
    "aten::_local_scalar_dense",
    "aten::item",
    "aten::is_nonzero",
    "aten::nonzero",
    "aten::equal",
    "aten::allclose",
    "aten::unique",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::masked_select",
    "aten::repeat_interleave",
)

# CUDA runtime calls that block the host (with ProfilerActivity.CUDA in the trace)
CUDA_WAITS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
)


def sync_ops(events):
    """Counter {op name: count} of the outermost sync-like ops among profiler `events`."""
    found = Counter()
    for event in events:
        if event.name in SYNC_OPS and not _inside_sync(event):
            found[event.name] += 1
    return found


def cuda_waits(events):
    """Counter {runtime call: count} of the CUDA calls that block the host."""
    return Counter(e.name for e in events if e.name in CUDA_WAITS)


def _inside_sync(event):
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in SYNC_OPS:
            return True
        parent = parent.cpu_parent
    return False
