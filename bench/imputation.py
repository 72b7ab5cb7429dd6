"""Latent-norm inversion on held-out images of a trained run: sweeps of γ and of steps, the
classical baselines beside them, and the speed of the fused path against the reference.

    python bench/imputation.py --checkpoint runs/main --out bench/imputation-main

Writes sweep.json (every point, with its command line) and sweep.png (RMSE inside the hole
against γ and against steps, classical baselines as dashed lines). Numbers go to
docs/imputation.md with the command that produced them.
"""

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from missingglow.analysis import baselines  # noqa: E402
from missingglow.analysis.runs import open_run  # noqa: E402
from missingglow.completion.invert import DEFAULTS, harmonic_fill, invert  # noqa: E402
from missingglow.data.datasets import MaskedImages, dataset_of  # noqa: E402
from missingglow.data.masks import square_mask  # noqa: E402
from missingglow.flow.preprocess import from_model, to_model  # noqa: E402
from missingglow.render.images import save_png as save  # noqa: E402
from missingglow.render.plot import Series, line_chart, stack  # noqa: E402
from missingglow.training.checkpoint import build_model  # noqa: E402


def rmse_in(out, ref, hole):
    m = hole.expand_as(ref)
    return ((out - ref)[m] ** 2).mean().sqrt().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--gammas", default="0,0.001,0.003,0.01,0.03,0.1,0.3")
    ap.add_argument("--steps", default="25,50,100,150,300")
    ap.add_argument(
        "--holes",
        default=None,
        help="Instead of the sweeps: hole sides K (e.g. 3,5,8) on the clean held-out "
        "images, invert at its defaults against the baselines.",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    run = open_run(args.checkpoint)
    c = run.config
    held = MaskedImages(
        dataset_of(c, run.image_size),
        c["square"],
        c.get("squares", 1),
        c.get("seed", 0),
        split="heldout",
    )
    masked, clean, pos = held.batch(list(range(min(args.n, len(held)))))
    hole = square_mask(pos, c["square"], run.image_size)
    x0 = to_model(masked, run.n_bits)
    ref = from_model(to_model(clean, run.n_bits), run.n_bits)
    shown = from_model(x0, run.n_bits)
    if args.holes:
        return hole_sizes(run, held, clean, args)
    record = {
        "command": " ".join(sys.argv),
        "images": len(x0),
        "defaults": DEFAULTS,
        "baselines": {},
        "gamma": [],
        "steps": [],
        "speed": {},
    }
    record["baselines"]["harmonic fill"] = rmse_in(harmonic_fill(shown, hole), ref, hole)
    for name in baselines.available()[0]:
        record["baselines"][name] = rmse_in(baselines.inpaint(name, shown, hole), ref, hole)
    print(record["baselines"], flush=True)

    def point(**kw):
        began = time.perf_counter()
        out, _ = invert(run.model, x0, hole, **kw)
        seconds = time.perf_counter() - began
        return {
            **kw,
            "rmse_in": rmse_in(from_model(out[0], run.n_bits), ref, hole),
            "images_per_s": len(x0) / seconds,
        }

    for g in (float(v) for v in args.gammas.split(",")):
        record["gamma"].append(point(gamma=g))
        print(record["gamma"][-1], flush=True)
    for s in (int(v) for v in args.steps.split(",")):
        record["steps"].append(point(steps=s))
        print(record["steps"][-1], flush=True)
    # the same inversion on the pure-PyTorch reference path, same weights
    reference = build_model(dict(run.model.config, impl="reference"), run.model.state_dict())
    for impl, model in (("fused", run.model), ("reference", reference.eval())):
        began = time.perf_counter()
        invert(model, x0, hole)
        record["speed"][impl] = len(x0) / (time.perf_counter() - began)
    print(record["speed"], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(record, f, indent=2)

    def panel(key, label, log=False):
        xs = [p[key] for p in record[key]]
        xs_plot = [math.log10(max(x, 1e-4)) if log else x for x in xs]
        series = [Series("invert", xs_plot, [p["rmse_in"] for p in record[key]])]
        for name, value in record["baselines"].items():
            series.append(
                Series(name, [xs_plot[0], xs_plot[-1]], [value, value], dashed=True, markers=False)
            )
        title = f"RMSE inside the hole against {'γ' if log else label}"
        return line_chart(series, title=title, xlabel=label, ylabel="RMSE")

    save(
        stack([panel("gamma", "log10 γ (γ = 0 drawn at −4)", log=True), panel("steps", "steps")]),
        os.path.join(args.out, "sweep.png"),
    )


def hole_sizes(run, held, clean, args):
    """Invert and the baselines with K×K holes (seeded places) cut into the clean originals."""
    from missingglow.data.masks import GREY, square_positions

    size, n = run.image_size, len(clean)
    ref = from_model(to_model(clean, run.n_bits), run.n_bits)
    record = {"command": " ".join(sys.argv), "images": n, "defaults": DEFAULTS, "holes": []}
    for k in (int(v) for v in args.holes.split(",")):
        pos = torch.stack(
            [
                square_positions(run.config.get("seed", 0), held.indices[j], k, 1, size)
                for j in range(n)
            ]
        )
        hole = square_mask(pos, k, size)
        x = to_model(torch.where(hole, torch.tensor(GREY), clean), run.n_bits)
        shown = from_model(x, run.n_bits)  # (to_model of this would not give x back exactly)
        row = {"hole": k, "harmonic fill": rmse_in(harmonic_fill(shown, hole), ref, hole)}
        for name in baselines.available()[0]:
            row[name] = rmse_in(baselines.inpaint(name, shown, hole), ref, hole)
        out, _ = invert(run.model, x, hole)
        row["invert"] = rmse_in(from_model(out[0], run.n_bits), ref, hole)
        record["holes"].append(row)
        print(row, flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "holes.json"), "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
