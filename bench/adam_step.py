"""Milliseconds per optimiser step over a preset's parameters: training's GuardedAdam (the compiled
masked_adam_ on the CPU, and its foreach reference) beside torch's own Adam (its default
implementation and its fused kernel, which read the step count on the host), interleaved step by
step in one process on the same gradients; medians.

    python bench/adam_step.py                  # the small preset, torch's default threads
    python bench/adam_step.py --preset paper --steps 10
"""

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from missingglow import Glow  # noqa: E402
from missingglow.flow import ops, ops_reference  # noqa: E402
from missingglow.training import adam  # noqa: E402
from missingglow.training.config import PRESETS, preset_config  # noqa: E402


def optimisers(p):
    """{name: optimiser}, each over its own copy of the preset's parameters, all with the same
    gradients."""
    torch.manual_seed(0)
    model = Glow(blocks=p.blocks, flows=p.flows, hidden=p.hidden, image_size=p.image_size)
    start = [q.detach() for q in model.parameters()]
    grads = [torch.randn_like(q) for q in start]
    made = {}
    kinds = {
        "GuardedAdam, compiled": lambda params: adam.GuardedAdam(params, 1e-4, "cpu"),
        "GuardedAdam, reference": lambda params: adam.GuardedAdam(params, 1e-4, "cpu"),
        "torch Adam": lambda params: torch.optim.Adam(params, lr=1e-4),
        "torch Adam, fused": lambda params: torch.optim.Adam(params, lr=1e-4, fused=True),
    }
    for name, make in kinds.items():
        params = [torch.nn.Parameter(q.clone(memory_format=torch.preserve_format)) for q in start]
        for q, g in zip(params, grads, strict=True):
            q.grad = g.clone(memory_format=torch.preserve_format)
        made[name] = make(params)
    return made


def timed(name, optimizer):
    """One step's seconds; the reference GuardedAdam runs with training/adam.py pointed at
    masked_adam_'s reference instead of the compiled op."""
    chooser = adam._masked_adam_for
    if name.endswith("reference"):
        adam._masked_adam_for = lambda params: ops_reference.masked_adam_
    try:
        start = time.perf_counter()
        optimizer.step()
        return time.perf_counter() - start
    finally:
        adam._masked_adam_for = chooser


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    if not ops.AVAILABLE:
        sys.exit(f"error: {ops.WHY_UNAVAILABLE}; build it with ./run.sh test or pip install -e .")
    p = preset_config(args.preset)
    made = optimisers(p)
    times = {name: [] for name in made}
    for i in range(args.warmup + args.steps):
        for name, optimizer in made.items():
            seconds = timed(name, optimizer)
            if i >= args.warmup:
                times[name].append(seconds)
    count = sum(q.numel() for q in made["torch Adam"].param_groups[0]["params"])
    tensors = len(made["torch Adam"].param_groups[0]["params"])
    print(
        f"preset {args.preset}: {tensors} tensors, {count:,} numbers, cpu, "
        f"{torch.get_num_threads()} threads, {args.steps} timed steps (median)"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:<24} {median * 1e3:7.2f} ms")
    return medians


if __name__ == "__main__":
    main()
