"""CI's check of the CUDA build (run by `./run.sh cuda-build`, not by pytest): the extension built
with FORCE_CUDA=1 loads, registers exactly the ops below, and each has both a CPU and a CUDA
kernel, except the optimiser's CPU-only update (CUDA runs torch's own fused Adam there).

No GPU is needed: registering a CUDA kernel only needs the library to link and load.
"""

import sys

import torch

import missingglow
from missingglow.flow import ops

# every op of csrc/: the flow ops, each with a forward, an inverse and a backward, the training
# step's ActNorm + 1×1 conv GEMM split for the coupling (a forward and its backward), and the
# optimiser's update, whose CUDA counterpart is torch's fused Adam (training/adam.py)
CPU_ONLY = ["missingglow::masked_adam_"]
EXPECTED = sorted(
    [
        f"missingglow::{op}_{part}"
        for op in ("actnorm_conv", "coupling_step", "flow_step")
        for part in ("forward", "inverse", "backward")
    ]
    + [f"missingglow::channel_gemm_split_{part}" for part in ("forward", "backward")]
    + CPU_ONLY
)

if not ops.AVAILABLE:
    sys.exit(f"the CUDA build did not load: {ops.WHY_UNAVAILABLE}")
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("missingglow::"))
if names != EXPECTED:
    missing, unexpected = sorted(set(EXPECTED) - set(names)), sorted(set(names) - set(EXPECTED))
    sys.exit(
        f"registered ops differ from the expected {len(EXPECTED)}: missing {missing}, "
        f"unexpected {unexpected}"
    )
missing = [
    f"{n} ({key})"
    for n in names
    for key in (("CPU",) if n in CPU_ONLY else ("CPU", "CUDA"))
    if not torch._C._dispatch_has_kernel_for_dispatch_key(n, key)
]
if missing:
    sys.exit("ops without a kernel: " + ", ".join(missing))
print(
    f"CUDA build ok: {missingglow.__file__}; {len(names)} ops, each with CPU and CUDA kernels "
    f"but the CPU-only {', '.join(n.split('::')[1] for n in CPU_ONLY)}: "
    + ", ".join(n.split("::")[1] for n in names)
)
