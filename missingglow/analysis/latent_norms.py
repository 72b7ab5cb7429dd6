"""‖Φ(x)‖ for held-out images with other square sizes and counts than the model was trained on
(the paper's Appendix B): square sizes 0, 2, 8, 16, 32 (at 64 px; scaled to the image size) with
the trained count, and 0, 1, 2 squares of the trained size. For Φ(data) ≈ N(0, I) in D dimensions
the norm concentrates near √D; the table prints it beside the statistics.

All variants use the same images and the same dequantisation noise, so they differ only by their
squares. Non-finite norms are counted and left out of the statistics.
"""

import math
import os

import torch

from ..flow.preprocess import dequantize, match_channels, quantize
from ..seeding import generator

PAPER_SIZES = (0, 2, 8, 16, 32)  # at 64×64
PAPER_COUNTS = (0, 1, 2)


def variants(square, count, image_size):
    """[(label, size, count, panel)]: sizes scaled from 64 px with the trained count, then counts
    of the trained size. Labels are unique; equal (size, count) pairs are computed once."""
    out = []
    for k in PAPER_SIZES:
        size = 0 if k == 0 else min(image_size, max(1, round(k * image_size / 64)))
        if any(v[1] == size for v in out):
            continue
        label = (
            "no square"
            if size == 0
            else f"{size}×{size}" + (" (trained)" if size == square else "")
        )
        out.append((label, size, count if size else 0, "sizes"))
    for c in PAPER_COUNTS:
        trained = " (trained)" if c == count else ""
        label = "no square" if c == 0 else f"{c} × {square}×{square}{trained}"
        out.append((label, square if c else 0, c, "counts"))
    return out


@torch.no_grad()
def latent_norms(run, n, seed=0, batch=50):
    """{label: norms tensor (n,)} per variant, plus the variant list and D."""
    from ..data.datasets import MaskedImages, dataset_of

    run.need_dataset()
    c = run.config
    cache = dataset_of(c, run.image_size)
    square, count = c["square"], c.get("squares", 1)
    specs = variants(square, count, run.image_size)
    norms, done = {}, {}
    for label, size, k, _ in specs:
        if (size, k) in done:
            norms[label] = done[(size, k)]
            continue
        items = MaskedImages(cache, size, k, c.get("seed", 0), split="heldout")
        m = min(n, len(items))
        gen = generator(seed, "latent-norms-noise")  # the same noise for every variant
        out = []
        for start in range(0, m, batch):
            masked, _, _ = items.batch(list(range(start, min(start + batch, m))))
            masked = match_channels(masked, run.model.in_channels)
            x = dequantize(quantize(masked, run.n_bits), run.n_bits, generator=gen)
            out.append(run.model.encode(x).norm(dim=1))
        norms[label] = done[(size, k)] = torch.cat(out)
    dims = run.model.in_channels * run.image_size**2
    return {"norms": norms, "variants": specs, "dims": dims}


def summary_rows(result):
    rows = []
    for label, values in result["norms"].items():
        ok = values[torch.isfinite(values)]
        if len(ok):
            q = torch.quantile(
                ok.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.double)
            ).tolist()
            std = ok.std(unbiased=False).item()
            rows.append(
                {
                    "label": label,
                    "n": len(values),
                    "mean": ok.mean().item(),
                    "std": std,
                    "q25": q[0],
                    "median": q[1],
                    "q75": q[2],
                    "nonfinite": len(values) - len(ok),
                }
            )
        else:
            nan = float("nan")
            rows.append(
                {
                    "label": label,
                    "n": len(values),
                    "mean": nan,
                    "std": nan,
                    "q25": nan,
                    "median": nan,
                    "q75": nan,
                    "nonfinite": len(values),
                }
            )
    return rows


def format_table(result):
    rows = summary_rows(result)
    lines = [
        f"‖Φ(x)‖ on held-out images (D = {result['dims']}, √D = {math.sqrt(result['dims']):.1f})",
        f"{'squares':<26}{'n':>5}{'mean':>10}{'std':>9}{'q25':>10}{'median':>10}{'q75':>10}"
        f"{'non-finite':>12}",
    ]
    for r in rows:
        lines.append(
            f"{r['label']:<26}{r['n']:>5d}{r['mean']:>10.2f}{r['std']:>9.2f}{r['q25']:>10.2f}"
            f"{r['median']:>10.2f}{r['q75']:>10.2f}{r['nonfinite']:>12d}"
        )
    return "\n".join(lines)


def norms_csv(path, result):
    from ..atomic import write_csv

    header = ["squares", "n", "mean", "std", "q25", "median", "q75", "nonfinite"]
    body = [
        [
            r["label"],
            r["n"],
            f"{r['mean']:.4f}",
            f"{r['std']:.4f}",
            f"{r['q25']:.4f}",
            f"{r['median']:.4f}",
            f"{r['q75']:.4f}",
            r["nonfinite"],
        ]
        for r in summary_rows(result)
    ]
    return write_csv(path, header, body)


def norms_plot(result):
    from ..render.plot import histogram_chart, stack

    panels = []
    for panel, title in (
        ("sizes", "‖Φ(x)‖ by square size"),
        ("counts", "‖Φ(x)‖ by number of squares"),
    ):
        labels = list(dict.fromkeys(label for label, _, _, p in result["variants"] if p == panel))
        groups = [(label, result["norms"][label].tolist()) for label in labels]
        bad = sum(int((~torch.isfinite(result["norms"][label])).sum()) for label in labels)
        note = f"√D = {math.sqrt(result['dims']):.1f}" + (
            f"; {bad} non-finite norms left out" if bad else ""
        )
        panels.append(histogram_chart(groups, title=title, xlabel="‖Φ(x)‖", note=note))
    return stack(panels)


def write_latent_norms(result, out):
    """The summary CSV and the histograms into folder `out`; returns the paths written."""
    from ..render.images import save_png

    return [
        norms_csv(os.path.join(out, "latent-norms.csv"), result),
        save_png(norms_plot(result), os.path.join(out, "latent-norms.png")),
    ]
