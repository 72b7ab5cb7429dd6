"""The scale study: when does a Glow trained on masked images learn the square?

Each lever is one change from the base setting (the `small` preset: synthetic faces, 16×16,
3 blocks × 8 flows, hidden 64, K = 5, batch 64, lr 1e-3). A run trains in segments up to each
milestone and is measured there; measurements go to RUN/study.jsonl, one line per milestone, and
the milestone's checkpoint is kept in RUN/kept/. Everything resumes: a milestone already measured
is skipped, training continues from the run's latest checkpoint. So a study can stop at any time
(Ctrl-C, SIGKILL, a machine's shutdown) and go on later with the same command.

    python experiments/study.py list
    python experiments/study.py run base --until 40000 --every 2000      # one process per run list
    python experiments/study.py run hidden128 flows16 --until 3000 --every 1000
    python experiments/study.py report --out docs/figures/study --md docs/study-table.md

What is measured at a milestone (all on fixed images, noise and seeds, so milestones compare):
  - bits/dim of 256 training and 256 held-out images, masked and clean (the same images without
    the square), and the gap masked − clean: a model that has learned the square finds its grey
    pixels cheap (gap falls toward and below 0);
  - Table 1: 50 samples at each t = 0.3 … 1.3, the share of finite samples the detector finds a
    square in, non-finite samples counted apart; and a sheet of those samples (PNG) to look at;
  - imputation inside the square against the clean original at α = 0.5, 0.6, 0.7: the flow alone
    (and how much it changes the pixels outside the square), and keeping the observed pixels
    through 3 rounds, beside grey fill and mean-colour fill (64 held-out images).
This script is for background runs of minutes to hours; CI never runs it (tests/test_study.py
runs one tiny milestone).
"""

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import replace

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # the core never uses it
import torch  # noqa: E402

from missingglow.analysis import evaluate
from missingglow.analysis.runs import open_run, sample_sheet
from missingglow.analysis.table1 import square_table
from missingglow.data.datasets import MaskedImages, dataset_of  # noqa: E402
from missingglow.render import plot  # noqa: E402
from missingglow.render.images import save_png  # noqa: E402
from missingglow.training import checkpoint
from missingglow.training import config as presets  # noqa: E402
from missingglow.training.heldout import heldout_bits_per_dim  # noqa: E402
from missingglow.training.loop import train  # noqa: E402

TEMPERATURES = (0.3, 0.5, 0.7, 0.9, 1.1, 1.3)
ALPHAS = (0.5, 0.6, 0.7)
SAMPLES_PER_T = 50
BPD_IMAGES = 256
IMPUTE_IMAGES = 64
KEEP_ITERATIONS = 3  # keeping the observed pixels matters only when the restoration is iterated

# One change at a time from the base (the `small` preset). The prediction was written before the
# run; docs/phenomenon.md records what happened.
LEVERS = {
    "base": dict(
        lever="base (small preset)",
        change={},
        prediction=(
            "gap shrinks slowly (≈ −0.005 bits/dim per 1k iterations at first, then slower) and "
            "stays positive to 40k; faint squares at t ≥ 0.7 in 10–30 % of samples, none at t ≤ 0.5"
        ),
    ),
    "clean": dict(
        lever="control: no square",
        change=dict(square=0),
        detector_square=5,
        prediction=(
            "the detector's false-positive floor: samples of a model that never saw a square, "
            "counted with base's detector (K = 5). Expect 5–20 % at t ≥ 0.7 while samples are "
            "noisy, falling as they sharpen; any base count at or below this floor is not "
            "evidence of squares"
        ),
    ),
    "hidden128": dict(
        lever="coupling width",
        change=dict(hidden=128),
        prediction=(
            "more capacity per flow: lower bits/dim overall and a gap shrinking faster than base "
            "per iteration, at ~2× the cost per iteration"
        ),
    ),
    "flows16": dict(
        lever="flows per block",
        change=dict(flows=16),
        prediction=("like hidden128: a faster-shrinking gap per iteration at ~2× the cost"),
    ),
    "blocks2": dict(
        lever="number of blocks",
        change=dict(blocks=2),
        prediction=(
            "fewer levels: the top prior sees 4×4×48 instead of 2×2×192 and the square (5 px) "
            "spans fewer latent positions of the last level; little change in the gap, cheaper per "
            "iteration"
        ),
    ),
    "size32": dict(
        lever="image size",
        change=dict(image_size=32, square=10, blocks=4),
        prediction=(
            "same K/S at 32×32 (K = 10, 4 blocks): the square's edge is a smaller share of the "
            "pixels, so the gap per dimension starts smaller but falls no faster; ~4× the cost per "
            "iteration"
        ),
    ),
    "square8": dict(
        lever="square size (K/S 0.5)",
        change=dict(square=8),
        prediction=(
            "as in the first runs: gap negative at once, squares in samples at every t "
            "(in the mean)"
        ),
    ),
    "square3": dict(
        lever="square size (K/S 0.19)",
        change=dict(square=3),
        prediction=(
            "a smaller square costs fewer bits: gap smaller in absolute terms, learned no sooner"
        ),
    ),
    "images50k": dict(
        lever="training images",
        change=dict(synthetic_count=50_000),
        prediction=(
            "no change in the gap within a few thousand iterations (10k images are not yet "
            "overfitted at 64 × 3k = 192k images seen); matters only in long runs"
        ),
    ),
    "images1k": dict(
        lever="training images",
        change=dict(synthetic_count=1_000),
        prediction=(
            "overfits: training gap falls faster than base (the square positions of 1k images are "
            "memorised), held-out gap does not"
        ),
    ),
    "simple": dict(
        lever="dataset simplicity",
        change=dict(synthetic_detail="low"),
        prediction=(
            "blurred faces (drawn at 8 px, bilinear to 16) leave less detail to learn, so capacity "
            "goes to the square sooner: gap falls faster than base, squares in samples at t ≈ 1 "
            "sooner"
        ),
    ),
    "simple-clean": dict(
        lever="control: simple, no square",
        change=dict(synthetic_detail="low", square=0),
        detector_square=5,
        prediction=(
            "the detector's floor on the blurred faces: lower than on the full faces (fewer sharp "
            "features to mistake for a square's edges)"
        ),
    ),
    "additive": dict(
        lever="coupling type",
        change=dict(affine=False),
        prediction=(
            "additive coupling cannot scale, so the flat grey square is harder to make cheap: gap "
            "falls slower than base; no non-finite samples"
        ),
    ),
    "lr2e-3": dict(
        lever="learning rate",
        change=dict(lr=2e-3, warmup=1000),
        prediction=(
            "faster early progress in bits/dim, a faster-falling gap, maybe non-finite steps"
        ),
    ),
    "lr3e-4": dict(
        lever="learning rate",
        change=dict(lr=3e-4, warmup=200),
        prediction=("slower everywhere: gap falls slower than base"),
    ),
    "bits3": dict(
        lever="n_bits",
        change=dict(n_bits=3),
        prediction=(
            "coarser pixels leave less fine detail to model, so the square is a larger share of "
            "what remains: gap (in bits/dim at 3 bits) shrinks faster relative to its start"
        ),
    ),
    "memsave": dict(
        lever="memory-saving path (speed only)",
        change=dict(memory_saving=True),
        prediction=("same curve as base up to rounding, ~1.3× slower per iteration"),
    ),
}


def base_config():
    """The small preset on the full-detail faces: the base every lever changes one thing of (the
    preset itself trains on the low-detail faces, which is this study's `simple` lever). A plain
    dict, as a run stores its config, so that a lever's change is a dict update."""
    config, _ = presets.resolve_config(
        {"preset": "small", "synthetic_detail": "full"}, has_gpu=False
    )
    return config.to_dict()


def run_config(name, root):
    """The full training config of lever `name`, its run folder under `root`, as a plain dict."""
    if name not in LEVERS:
        raise SystemExit(f"unknown run {name!r}; `study.py list` shows the levers")
    config = presets.TrainConfig(**dict(base_config(), **LEVERS[name]["change"]))
    presets.validate(config)
    config = replace(
        config,
        out=os.path.join(root, name),
        sample_every=10**9,
        eval_every=10**9,
        checkpoint_every=500,
        log_every=50,
    )
    return config.to_dict()


# --- measuring a checkpoint -----------------------------------------------------------------------


def measured(run_dir):
    """{iteration: record} of the milestones already measured (a torn last line is skipped)."""
    out = {}
    path = os.path.join(run_dir, "study.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                out[record["iter"]] = record
    return out


@torch.no_grad()
def measure(run_dir, train_seconds, detector_square=None):
    """One study record for the run's latest checkpoint (see the module docstring).
    `detector_square`: the square size the detector looks for when the run has none (the
    control)."""
    run = open_run(run_dir, square=detector_square)
    config = run.config
    model = run.model.eval()
    cache = dataset_of(config)
    record = {
        "iter": checkpoint.load_checkpoint(run_dir)["iteration"],
        "train_seconds": train_seconds,
    }
    for split in ("train", "heldout"):
        images = MaskedImages(cache, config["square"], config["squares"], config["seed"], split)
        bpd = heldout_bits_per_dim(
            model, images, config["n_bits"], config["seed"], BPD_IMAGES, config["batch"]
        )
        record[split] = {k: round(bpd[k], 5) for k in ("masked", "clean", "gap")}
    rows = square_table(run, TEMPERATURES, SAMPLES_PER_T, seed=0)
    record["table1"] = [
        {
            "t": r["t"],
            "finite": r["finite"],
            "nonfinite": r["nonfinite"],
            "with_square_pct": round(100 - r["shares"][0], 1) if r["finite"] else None,
            "E": round(r["E"], 3) if r["finite"] else None,
        }
        for r in rows
    ]
    sheet, _ = sample_sheet(run, TEMPERATURES, 12, seed=0)
    save_png(sheet, os.path.join(run_dir, "study", f"samples-{record['iter']:08d}.png"))
    with torch.enable_grad():  # the latent-norm inversion in evaluate takes gradient steps
        result = evaluate.evaluate(run, IMPUTE_IMAGES, list(ALPHAS), iterations=KEEP_ITERATIONS)
    record["impute"] = [
        {
            k: (round(v, 5) if isinstance(v, float) else v)
            for k, v in row.items()
            if k in ("method", "alpha", "rmse_in", "rmse_out", "nonfinite")
        }
        for row in result["rows"]
    ]
    return record


def append_record(run_dir, record):
    with open(os.path.join(run_dir, "study.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def keep_milestone(run_dir, iteration):
    """Copy the milestone's checkpoint to RUN/kept/ (the run itself keeps only its newest 3)."""
    source = checkpoint.resolve(run_dir)
    target = os.path.join(run_dir, "kept", f"ckpt-{iteration:08d}.pt")
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target + ".tmp")
        os.replace(target + ".tmp", target)


def claim(run_dir):
    """Take RUN/.lock for this process, so that two study processes never train one run; False
    when a live process holds it. A lock left by a dead process is taken over."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, ".lock")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            with open(path) as f:
                os.kill(int(f.read().strip() or 0), 0)
            return False
        except (ValueError, ProcessLookupError):
            os.remove(path)
            return claim(run_dir)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_lever(name, root, until, every, say):
    config = presets.TrainConfig(**run_config(name, root))
    run_dir = config.out
    if not claim(run_dir):
        say(f"{name}: another study process is training it; skipped")
        return
    try:
        _run_milestones(name, config, run_dir, until, every, say)
    finally:
        os.remove(os.path.join(run_dir, ".lock"))


def _run_milestones(name, config, run_dir, until, every, say):
    done = measured(run_dir)
    seconds = max((r["train_seconds"] for r in done.values()), default=0.0)
    for milestone in range(every, until + 1, every):
        if milestone in done:
            continue
        start = time.perf_counter()
        resume = run_dir if os.path.exists(os.path.join(run_dir, checkpoint.LATEST)) else None
        if resume is None:
            train(config, iterations=milestone, progress=False, say=say)
        else:
            train(resume=run_dir, iterations=milestone, progress=False, say=say)
        seconds += time.perf_counter() - start
        keep_milestone(run_dir, milestone)
        record = measure(run_dir, round(seconds, 1), LEVERS[name].get("detector_square"))
        record["name"] = name
        record["s_per_iter"] = segment_speed(run_dir, milestone - every, milestone)
        append_record(run_dir, record)
        say(summary_line(record))


def segment_speed(run_dir, first, last):
    """Median seconds per iteration over the training log lines of iterations (first, last]."""
    values = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "s_per_iter" in record and first < record["iter"] <= last:
                values.append(record["s_per_iter"])
    values.sort()
    return round(values[len(values) // 2], 4) if values else None


def _fmt(value):
    return f"{value:.3f}" if value == value else "—"


def summary_line(r):
    squares = " ".join(
        f"{row['with_square_pct'] if row['with_square_pct'] is not None else '—'}"
        for row in r["table1"]
    )
    return (
        f"{r['name']} @ {r['iter']:,}: held-out gap {r['heldout']['gap']:+.4f} "
        f"(train {r['train']['gap']:+.4f}), "
        f"% with squares at t={'/'.join(map(str, TEMPERATURES))}: "
        f"{squares}; {r['s_per_iter']} s/it"
    )


# --- the report -----------------------------------------------------------------------------------


def load_runs(root, names=None):
    runs = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if (names and name not in names) or name not in LEVERS:
            continue
        records = measured(os.path.join(root, name))
        if records:
            runs[name] = [records[k] for k in sorted(records)]
    return runs


def impute_rmse(record, method, alpha=None, where="rmse_in"):
    for row in record["impute"]:
        if row["method"] == method and (alpha is None or abs(row["alpha"] - alpha) < 1e-9):
            return row[where]
    return float("nan")


def gap_chart(runs, split="heldout"):
    """One line per run (the no-square controls, whose gap is 0 by construction, left out); past
    the palette's colours the lines are dashed, so no two look alike."""
    named = [(name, rs) for name, rs in runs.items() if "detector_square" not in LEVERS[name]]
    series = [
        plot.Series(
            name,
            [r["iter"] for r in rs],
            [r[split]["gap"] for r in rs],
            dashed=i >= len(plot.PALETTE),
        )
        for i, (name, rs) in enumerate(named)
    ]
    return plot.line_chart(
        series,
        title=f"{split} gap: bits/dim of masked − clean images",
        xlabel="training iteration",
        ylabel="gap (bits/dim)",
        note="below 0: the square is cheaper than the face it hides",
    )


def _square_free(record, label, **style):
    return plot.Series(
        label,
        [row["t"] for row in record["table1"]],
        [
            100 - row["with_square_pct"] if row["with_square_pct"] is not None else float("nan")
            for row in record["table1"]
        ],
        **style,
    )


def square_free_chart(name, records, control=None, at_most=5):
    """Share of finite samples without a detected square vs t, one line per milestone; dashed, the
    no-square control at the latest milestone it has up to the last one shown (the detector's
    floor)."""
    step = max(1, len(records) // at_most)
    chosen = records[::-1][::step][::-1][-at_most:]
    series = [_square_free(r, f"{r['iter']:,} it") for r in chosen]
    before = [r for r in control or [] if r["iter"] <= chosen[-1]["iter"]]
    if before and LEVERS[name].get("detector_square") is None:
        series.append(
            _square_free(
                before[-1],
                f"control, no square ({before[-1]['iter']:,} it)",
                dashed=True,
                colour=(120, 120, 120),
            )
        )
    return plot.line_chart(
        series,
        title=f"{name}: square-free samples vs temperature",
        xlabel="temperature t",
        ylabel="% of finite samples square-free",
        ylim=(0, 105),
        note="automatic detector, 50 samples per t",
    )


def table_markdown(runs):
    head = (
        "| run | lever | iterations | s/it | held-out gap | gap / clean bpd | train gap | "
        + " | ".join(f"% sq. t={t}" for t in TEMPERATURES)
        + " | non-finite (of 300) | RMSE in square, α=0.6 | grey fill | mean fill | "
        "RMSE outside, α=0.6 | keep observed ×3, α=0.6 |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, rs in runs.items():
        r = rs[-1]
        pct = " | ".join(
            "—" if row["with_square_pct"] is None else f"{row['with_square_pct']:g}"
            for row in r["table1"]
        )
        bad = sum(row["nonfinite"] for row in r["table1"])
        lines.append(
            f"| {name} | {LEVERS[name]['lever']} | {r['iter']:,} | {r['s_per_iter']} | "
            f"{r['heldout']['gap']:+.3f} | "
            f"{100 * r['heldout']['gap'] / r['heldout']['clean']:+.1f} % | "
            f"{r['train']['gap']:+.3f} | {pct} | {bad} | "
            f"{_fmt(impute_rmse(r, 'flow', 0.6))} | {_fmt(impute_rmse(r, 'grey fill'))} | "
            f"{_fmt(impute_rmse(r, 'mean-colour fill'))} | "
            f"{_fmt(impute_rmse(r, 'flow', 0.6, 'rmse_out'))} | "
            f"{_fmt(impute_rmse(r, f'flow + keep observed ×{KEEP_ITERATIONS}', 0.6))} |"
        )
    return "\n".join(lines) + "\n"


def gap_markdown(runs):
    """Held-out gap of every run at every milestone, one row per run."""
    iters = sorted({r["iter"] for rs in runs.values() for r in rs})
    lines = [
        "| run | " + " | ".join(f"{i // 1000}k" if i % 1000 == 0 else str(i) for i in iters) + " |",
        "|" + "---|" * (len(iters) + 1),
    ]
    for name, rs in runs.items():
        by_iter = {r["iter"]: r["heldout"]["gap"] for r in rs}
        lines.append(
            f"| {name} | "
            + " | ".join(f"{by_iter[i]:+.3f}" if i in by_iter else "" for i in iters)
            + " |"
        )
    return "\n".join(lines) + "\n"


def report(root, out, md, names):
    runs = load_runs(root, names)
    if not runs:
        raise SystemExit(f"no measured runs under {root}")
    os.makedirs(out, exist_ok=True)
    save_png(gap_chart(runs), os.path.join(out, "gap-vs-iterations.png"))
    save_png(gap_chart(runs, "train"), os.path.join(out, "train-gap-vs-iterations.png"))
    for name, records in runs.items():
        low = LEVERS[name]["change"].get("synthetic_detail") == "low"
        control = runs.get("simple-clean" if low else "clean")
        save_png(
            square_free_chart(name, records, control),
            os.path.join(out, f"square-free-vs-t-{name}.png"),
        )
    text = table_markdown(runs) + "\n" + gap_markdown(runs)
    if md:
        checkpoint.atomic_write(md, lambda f: f.write(text.encode()))
    print(text)


def sheet(specs, root, out, n=8):
    """Samples per t of several kept checkpoints side by side (`RUN@ITERATION`), same seeds: what a
    person checks the detector's counts against. Larger tiles than the per-milestone sheets."""
    from PIL import Image, ImageDraw

    panels = []
    for spec in specs:
        name, _, iteration = spec.partition("@")
        path = os.path.join(root, name, "kept", f"ckpt-{int(iteration):08d}.pt")
        if not os.path.exists(path):
            raise SystemExit(f"no kept checkpoint {path}")
        run = open_run(path, square=LEVERS.get(name, {}).get("detector_square"))
        image, _ = sample_sheet(run, TEMPERATURES, n, seed=0, min_tile=48)
        title = f"{name}, {int(iteration):,} iterations"
        panel = Image.new("RGB", (image.size[0], image.size[1] + 22), (255, 255, 255))
        panel.paste(image, (0, 22))
        ImageDraw.Draw(panel).text((60, 3), title, fill=(0, 0, 0), font=plot.font(14))
        panels.append(panel)
    save_png(plot.stack(panels, vertical=False, gap=24), out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the levers, their changes and predictions")
    run = sub.add_parser("run", help="train and measure runs (resumes)")
    run.add_argument("names", nargs="+")
    run.add_argument("--until", type=int, required=True, help="last milestone (iterations)")
    run.add_argument("--every", type=int, default=1000, help="iterations between milestones")
    run.add_argument("--root", default="study-runs")
    run.add_argument("--threads", type=int, default=1)
    rep = sub.add_parser("report", help="curves (PNG) and tables (markdown) of measured runs")
    rep.add_argument("names", nargs="*")
    rep.add_argument("--root", default="study-runs")
    rep.add_argument("--out", default="study-report")
    rep.add_argument("--md", default=None)
    cmp = sub.add_parser("sheet", help="samples per t of kept checkpoints side by side (PNG)")
    cmp.add_argument("specs", nargs="+", metavar="RUN@ITERATION")
    cmp.add_argument("--root", default="study-runs")
    cmp.add_argument("--out", required=True)
    cmp.add_argument("-n", type=int, default=8, help="samples per temperature")
    args = parser.parse_args(argv)
    if args.command == "sheet":
        sheet(args.specs, args.root, args.out, args.n)
        return
    if args.command == "list":
        for name, lever in LEVERS.items():
            print(
                f"{name:<10} {lever['lever']:<32} {lever['change']}\n{'':<11}prediction: "
                f"{lever['prediction']}"
            )
        return
    if args.command == "report":
        report(args.root, args.out, args.md, args.names)
        return
    torch.set_num_threads(args.threads)
    say = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    for name in args.names:
        run_lever(name, args.root, args.until, args.every, say)


if __name__ == "__main__":
    main()
