"""How fast the data layer is: preparing a folder, drawing synthetic faces, reading batches.

    python bench/data_speed.py                       # 3000 JPEGs, 10000 faces, S = 64
    python bench/data_speed.py --jpegs 500 --faces 1000 --markdown table.md

The JPEG folder is made of synthetic faces drawn at 218 px and cropped to 178×218, CelebA's
`img_align_celeba` shape, saved at quality 90. Batch reads are from a warm page cache.
"""

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from missingglow.data import datasets as data  # noqa: E402
from missingglow.data import synthetic


def make_jpegs(folder, n):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        img = synthetic.draw_face(1, i, 218).crop((20, 0, 198, 218))
        img.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def batch_ms(ds, batch, reps, loader):
    rng = random.Random(0)
    times = []
    if loader:
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=batch,
            shuffle=True,
            num_workers=0,
            generator=torch.Generator().manual_seed(0),
        )
        it = iter(dl)
        for _ in range(reps):
            start = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                it = iter(dl)
                next(it)
            times.append(time.perf_counter() - start)
    else:
        for _ in range(reps):
            js = rng.sample(range(len(ds)), batch)
            start = time.perf_counter()
            ds.batch(js)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jpegs", type=int, default=3000)
    p.add_argument("--faces", type=int, default=10000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--square", type=int, default=20)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache_dir = os.path.join(tmp, "jpegs"), os.path.join(tmp, "cache")
        _, t = timed(lambda: make_jpegs(folder, args.jpegs))
        print(f"wrote {args.jpegs} JPEGs (178×218) in {t:.1f} s", file=sys.stderr)
        for workers in sorted({1, cores}):
            _, t = timed(
                lambda: data.open_dataset(
                    folder,
                    args.size,
                    cache_dir=cache_dir,
                    workers=workers,
                    rebuild=True,
                    quiet=True,
                )
            )
            rows.append(
                (
                    f"prepare {args.jpegs} JPEGs 178×218 → {args.size}², {workers} process"
                    f"{'es' if workers > 1 else ''}",
                    f"{args.jpegs / t:,.0f} images/s",
                )
            )
        _, t = timed(lambda: data.open_dataset(folder, args.size, cache_dir=cache_dir, quiet=True))
        rows.append(
            ("reopen the same cache (file list digest + header check)", f"{1000 * t:.0f} ms")
        )
        for workers in sorted({1, cores}):
            _, t = timed(
                lambda: data.open_dataset(
                    None,
                    args.size,
                    cache_dir=cache_dir,
                    workers=workers,
                    synthetic_count=args.faces,
                    rebuild=True,
                    quiet=True,
                )
            )
            rows.append(
                (
                    f"draw {args.faces} synthetic faces at {args.size}², {workers} process"
                    f"{'es' if workers > 1 else ''}",
                    f"{args.faces / t:,.0f} images/s ({t:.1f} s)",
                )
            )
        cache = data.open_dataset(
            None, args.size, cache_dir=cache_dir, synthetic_count=args.faces, quiet=True
        )
        ds = data.MaskedImages(cache, square=args.square, count=1, seed=0)
        ds.batch(list(range(args.batch)))  # warm the page cache
        default_threads = torch.get_num_threads()
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            each = f"{threads} torch thread{'s' if threads > 1 else ''}"
            rows.append(
                (
                    f"read one batch of {args.batch} with a {args.square}-px square, "
                    f"`MaskedImages.batch`, {each}",
                    f"{batch_ms(ds, args.batch, args.reps, False):.2f} ms",
                )
            )
            rows.append(
                (
                    f"read one batch of {args.batch} through a DataLoader (num_workers=0), {each}",
                    f"{batch_ms(ds, args.batch, args.reps, True):.2f} ms",
                )
            )
        torch.set_num_threads(default_threads)
    command = "python bench/data_speed.py " + " ".join(sys.argv[1:])
    lines = [
        "| what | speed |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        f"Measured with `{command.strip()}` on {platform.processor() or platform.machine()}, "
        f"{cores} cores, torch {torch.__version__}, Python {platform.python_version()}.",
    ]
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("# Data layer speed\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
