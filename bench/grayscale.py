"""The paper preset on a folder of grayscale images: a one-channel model (what `train` does for such
a folder) against the same images as three equal RGB channels (what it did before).

    OMP_NUM_THREADS=1 python bench/grayscale.py [--iterations 3] [--images 100] [--size 64]

Writes the folder of grey synthetic faces and both runs under /tmp/missingglow-grayscale and prints
the held-out bits/dim and gradient norm after each step. docs/reliability.md has the result.
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from missingglow.data.synthetic import draw_face  # noqa: E402
from missingglow.training.config import resolve_config  # noqa: E402
from missingglow.training.loop import train  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--work", default="/tmp/missingglow-grayscale")
    args = parser.parse_args()
    folder = os.path.join(args.work, "faces")
    os.makedirs(folder, exist_ok=True)
    for i in range(args.images):
        draw_face(0, i, args.size).convert("L").save(os.path.join(folder, f"{i:04d}.png"))
    os.environ["MISSINGGLOW_CACHE"] = os.path.join(args.work, "cache")
    print(f"paper preset, {args.images} grey faces at {args.size} px")
    print("channels  held-out bits/dim (clean) per step        gradient norm per step")
    for channels in (3, 1):
        out = os.path.join(args.work, f"run-{channels}")
        shutil.rmtree(out, ignore_errors=True)
        config, _ = resolve_config(
            dict(
                preset="paper",
                data=folder,
                image_size=args.size,
                iterations=args.iterations,
                eval_every=1,
                log_every=1,
                sample_every=10**9,
                checkpoint_every=10**9,
                heldout_images=16,
                channels=channels,
                out=out,
            ),
            has_gpu=False,
        )
        train(config, progress=False, say=lambda line: None)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        bpd = [f"{r['heldout_bpd_clean']:.2f}" for r in rows if "heldout_bpd_clean" in r]
        norms = [f"{r['grad_norm']:.3g}" for r in rows if "grad_norm" in r]
        print(f"{channels:8d}  {', '.join(bpd):40s}  {', '.join(norms)}")


if __name__ == "__main__":
    main()
