"""CI's check of the CUDA build (run by `./run.sh cuda-build`, not by pytest): the extension built
with FORCE_CUDA=1 loads, and every missingglow op has both a CPU and a CUDA kernel registered.

No GPU is needed: registering a CUDA kernel only needs the library to link and load.
"""
import sys

import torch

import missingglow
from missingglow.flow import ops

if not ops.AVAILABLE:
    sys.exit(f"the CUDA build did not load: {ops.WHY_UNAVAILABLE}")
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("missingglow::"))
if not names:
    sys.exit("no missingglow ops are registered")
missing = [f"{n} ({key})" for n in names for key in ("CPU", "CUDA")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(n, key)]
if missing:
    sys.exit("ops without a kernel: " + ", ".join(missing))
print(f"CUDA build ok: {missingglow.__file__}; {len(names)} ops, each with CPU and CUDA kernels: "
      + ", ".join(n.split("::")[1] for n in names))
