"""Seconds per training iteration (forward + backward + Adam) of a preset, fused vs reference.

Both implementations run in the same process, interleaved step by step, on the same batch, so the
ratio holds even on a busy machine; medians over the timed steps.

    python bench/train_speed.py --preset small --steps 20
    python bench/train_speed.py --preset paper --steps 3 --threads 2
    python bench/train_speed.py --allocator default    # glibc's default, not training's setting

Like `missingglow train`, it keeps freed heap memory (missingglow/training/allocator.py) unless
told not to.
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
from missingglow.flow.preprocess import bits_per_dim  # noqa: E402
from missingglow.training.allocator import keep_freed_memory  # noqa: E402
from missingglow.training.config import PRESETS, preset_config  # noqa: E402


def make(p, impl):
    torch.manual_seed(0)
    return Glow(blocks=p.blocks, flows=p.flows, hidden=p.hidden, image_size=p.image_size,
                impl=impl)


def step(model, optimizer, x, bits):
    sync(x.device)
    start = time.perf_counter()
    loss = bits_per_dim(model.log_prob(x), bits, x[0].numel()).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sync(x.device)
    return time.perf_counter() - start


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--allocator", choices=["keep", "default"], default="keep",
                        help="keep freed heap memory, as training does, or glibc's default")
    args = parser.parse_args()
    kept = args.allocator == "keep" and keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = preset_config(args.preset)
    x = (torch.rand(p.batch, 3, p.image_size, p.image_size) - 0.5).to(args.device)
    runs = {}
    for impl in ("reference", "fused"):
        model = make(p, impl).to(args.device)
        with torch.no_grad():
            model.log_prob(x)  # ActNorm init
        runs[impl] = (model, torch.optim.Adam(model.parameters(), lr=1e-4), [])
    for i in range(args.warmup + args.steps):
        for _impl, (model, optimizer, times) in runs.items():
            t = step(model, optimizer, x, p.n_bits)
            if i >= args.warmup:
                times.append(t)
    print(f"preset {args.preset}: {p.image_size}x{p.image_size}, {p.blocks} blocks x "
          f"{p.flows} flows, hidden {p.hidden}, batch {p.batch}, "
          f"{args.device}, {torch.get_num_threads()} threads, {args.steps} timed steps (median), "
          f"{'freed heap kept' if kept else 'glibc default allocator'}")
    print(f"{'impl':<10} {'s/iter':>8} {'images/s':>9}")
    medians = {}
    for impl, (_, _, times) in runs.items():
        medians[impl] = statistics.median(times)
        print(f"{impl:<10} {medians[impl]:8.3f} {p.batch / medians[impl]:9.1f}")
    print(f"fused speed-up: {medians['reference'] / medians['fused']:.2f}x")


if __name__ == "__main__":
    main()
