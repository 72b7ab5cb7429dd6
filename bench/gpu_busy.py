"""How much of a CUDA training step the GPU is busy: wall time per step against the summed time of
the kernels it ran (torch.profiler), for the fused model and the reference.

    python bench/gpu_busy.py                  # the small preset and the paper's shapes

At the small preset a step launches thousands of tiny kernels; when their summed time is far under
the wall time, the step is bound by the host (Python, dispatch, autograd, launches), not by the
kernels, and fusing arithmetic on the GPU cannot show. The fused model runs both ways: its ops one
by one (the default) and through the opt-in C++ flow-step driver, which dispatches more kernels
per step but less from Python. Needs a CUDA device.
"""

import argparse
import statistics
import time

import torch

# bench/flows.py, beside this file (it also puts the checkout on sys.path)
from flows import make_glow, train_step
from torch.profiler import ProfilerActivity, profile

from missingglow.flow import fused_step

PRESETS = {
    "small": dict(size=32, blocks=3, flows=8, hidden=64, batch=64),
    "paper": dict(size=64, blocks=4, flows=32, hidden=512, batch=16),
}


def wall_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def kernel_ms_and_count(fn):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.device_time for e in kernels) / 1000, len(kernels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    assert torch.cuda.is_available(), "needs a CUDA device"
    print("| preset | version | wall ms/step | kernel ms/step | kernels/step | GPU busy |")
    print("|---|---|---|---|---|---|")
    default = fused_step.FusedFlowStep.driver
    try:
        rows(args)
    finally:
        fused_step.FusedFlowStep.driver = default


def rows(args):
    """A table row per preset and version, the driver set on the class for each."""
    for name, preset in PRESETS.items():
        gen = torch.Generator().manual_seed(0)
        size = preset["size"]
        x = (torch.rand(preset["batch"], 3, size, size, generator=gen) - 0.5).cuda()
        for label, impl, driver in [
            ("reference", "reference", False),
            ("fused, ops one by one (default)", "fused", False),
            ("fused, C++ driver (opt-in)", "fused", True),
        ]:
            fused_step.FusedFlowStep.driver = driver
            step = train_step(make_glow(impl, preset, "cuda"), x)
            for _ in range(3):
                step()
            wall = wall_ms(step, args.repeats)
            kernel, count = kernel_ms_and_count(step)
            print(
                f"| {name} | {label} | {wall:.1f} | {kernel:.1f} | {count} | {kernel / wall:.0%} |"
            )


if __name__ == "__main__":
    main()
