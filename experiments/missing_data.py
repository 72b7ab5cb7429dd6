"""The tables of docs/missing-data.md from the runs and files experiments/missing_data.sh leaves.

    python experiments/missing_data.py runs/missing-data

Reads each run's metrics.jsonl (held-out bits/dim, refills), `seconds` (wall time of its
training), table1/table1.csv, families.json and calibration.json (evaluate --json), and the
conditional Table 1's CSVs; prints Markdown tables. A file that is not there yet is shown as "—".
"""

import csv
import json
import math
import os
import sys

DATASETS = ("faces", "photos")
KINDS = ("naive", "complete", "clean")
FAMILIES = ("square", "centre", "rectangles", "pixels")
CLASSICAL = ("biharmonic (scikit-image)", "Telea (OpenCV)", "Navier–Stokes (OpenCV)")


def load_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def metrics(run):
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def header(*names):
    print("| " + " | ".join(names) + " |")
    print("|" + "---|" * len(names))


def cell(value, fmt="{:.3f}"):
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else fmt.format(value)
    )


def training_rows(root):
    header(
        "data",
        "model",
        "held-out bits/dim, clean",
        "held-out bits/dim, holed",
        "training (s)",
        "×naive",
        "refills (s)",
        "fill RMSE start → end",
    )
    for data in DATASETS:
        naive_seconds = None
        for kind in KINDS:
            run = os.path.join(root, f"{data}-{kind}")
            log = metrics(run)
            evals = [r for r in log if "heldout_bpd_clean" in r]
            last = evals[-1] if evals else {}
            seconds = None
            if os.path.exists(os.path.join(run, "seconds")):
                with open(os.path.join(run, "seconds")) as f:
                    seconds = float(f.read())
            if kind == "naive":
                naive_seconds = seconds
            ratio = seconds / naive_seconds if seconds and naive_seconds else None
            # one event per iteration: a resumed or rolled-back run logs a replayed refill again
            by_iter = {r["iter"]: r for r in log if r.get("event") in ("fills", "refill")}
            refills = [r for r in by_iter.values() if r["event"] == "refill"]
            fills = [r["fill_rmse"] for r in by_iter.values() if r.get("fill_rmse") is not None]
            refill_s = sum(r["seconds"] for r in refills) if refills else None
            trail = " → ".join(f"{v:.3f}" for v in fills) if fills else "—"
            print(
                f"| {data} | {kind} | {cell(last.get('heldout_bpd_clean'))} | "
                f"{cell(last.get('heldout_bpd_masked'))} | {cell(seconds, '{:.0f}')} | "
                f"{cell(ratio, '{:.2f}')} | {cell(refill_s, '{:.0f}')} | {trail} |"
            )


def table1_rows(root):
    temps = None
    lines = []
    for data in DATASETS:
        for kind in KINDS:
            path = os.path.join(root, f"{data}-{kind}", "table1", "table1.csv")
            if not os.path.exists(path):
                lines.append((data, kind, None))
                continue
            with open(path) as f:
                rows = list(csv.DictReader(f))
            temps = [r["t"] for r in rows]
            lines.append((data, kind, [100 - float(r["share_0_pct"]) for r in rows]))
    if temps is None:
        print("(no Table 1 yet)")
        return
    print("| data | model | " + " | ".join(f"t={t}" for t in temps) + " |")
    print("|---|---|" + "---|" * len(temps))
    for data, kind, shares in lines:
        values = shares or [None] * len(temps)
        print(f"| {data} | {kind} | " + " | ".join(cell(v, "{:.0f} %") for v in values) + " |")


def best(rows, names):
    candidates = [r for r in rows if r["method"] in names and r.get("psnr_hole") is not None]
    return max(candidates, key=lambda r: float(r["psnr_hole"])) if candidates else None


def family_rows(root):
    header(
        "data",
        "model",
        "holes",
        "invert RMSE",
        "invert PSNR (dB)",
        "best classical",
        "its PSNR",
        "invert's lead (dB)",
        "PSNR whole",
    )
    for data in DATASETS:
        for kind in KINDS:
            result = load_json(os.path.join(root, f"{data}-{kind}", "families.json"))
            for family in FAMILIES:
                if result is None:
                    print(f"| {data} | {kind} | {family} | — | — | — | — | — | — |")
                    continue
                rows = result["families"][family]["rows"]
                inv = next(r for r in rows if r["method"] == "invert")
                classic = best(rows, CLASSICAL + ("harmonic fill",))
                lead = float(inv["psnr_hole"]) - float(classic["psnr_hole"]) if classic else None
                print(
                    f"| {data} | {kind} | {family} | {inv['rmse_hole']:.4f} | "
                    f"{inv['psnr_hole']:.2f} | {classic['method'] if classic else '—'} | "
                    f"{cell(classic and classic['psnr_hole'], '{:.2f}')} | "
                    f"{cell(lead, '{:+.2f}')} | "
                    f"{inv['psnr_whole']:.2f} |"
                )


def calibration_rows(root):
    header(
        "data",
        "model",
        "coverage of the 50 % interval",
        "its width",
        "coverage of the 90 % interval",
        "its width",
        "CRPS",
        "best of N RMSE",
        "invert RMSE",
    )
    for data in DATASETS:
        for kind in ("naive", "complete"):
            result = load_json(os.path.join(root, f"{data}-{kind}", "calibration.json"))
            if result is None:
                print(f"| {data} | {kind} |" + " — |" * 7)
                continue
            rows = result["families"]["square"]["rows"]
            post = next(r for r in rows if r["method"].startswith("posterior"))
            inv = next(r for r in rows if r["method"] == "invert")
            print(
                f"| {data} | {kind} | {post['coverage_50']:.2f} | {post['width_50']:.3f} | "
                f"{post['coverage_90']:.2f} | {post['width_90']:.3f} | {post['crps']:.4f} | "
                f"{post['best_rmse']:.4f} | {inv['rmse_hole']:.4f} |"
            )


def conditional_rows(root):
    """Per run and t: the share of completions with a grey hole, by the detector / by the
    pixels (% of finite completions)."""
    for data in DATASETS:
        path = os.path.join(root, f"conditional-{data}", "conditional_table1.csv")
        if not os.path.exists(path):
            print(f"({data}: no conditional Table 1 yet)")
            continue
        with open(path) as f:
            rows = list(csv.DictReader(f))
        temps = list(dict.fromkeys(r["temperature"] for r in rows))
        print(f"{data} (detector / pixels, % of finite completions):\n")
        header("run", *(t if t == "MAP" else f"t={t}" for t in temps))
        for run in dict.fromkeys(r["run"] for r in rows):
            cells = {
                r["temperature"]: f"{float(r['share_detector_pct']):.1f} / "
                f"{float(r['share_pixels_pct']):.1f}"
                for r in rows
                if r["run"] == run
            }
            name = os.path.basename(run.rstrip("/"))
            print(f"| {name} | " + " | ".join(cells.get(t, "—") for t in temps) + " |")
        print()


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "runs/missing-data"
    for title, part in (
        ("Training", training_rows),
        ("Table 1: samples with at least one grey square (%)", table1_rows),
        ("Restoring held-out images, per hole family", family_rows),
        ("Calibration of the posterior in the training square", calibration_rows),
        ("Conditional Table 1", conditional_rows),
    ):
        print(f"\n## {title}\n")
        part(root)


if __name__ == "__main__":
    main()
