"""The analysis commands as a user meets them: run in a subprocess, files written, numbers printed
that agree with the files and the computation, and bad input stated in one line with exit code 2
and no traceback (two cases in a fresh process, the rest through the same entry point in-process;
tests/test_cli_errors.py has more)."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from helpers import env_with_cache, error_line, run_in_process, tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "missingglow", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    cache = base / "cache"
    run = tiny_run(str(base / "run"), str(cache))
    photo = base / "photo.jpg"  # a 40×30 greyscale photo with a grey square: resized, cropped
    img = Image.new("L", (40, 30), 30)
    img.paste(128, (12, 8, 22, 18))
    img.save(photo)
    (base / "broken.png").write_bytes(b"not a png at all")
    torch.save({"weights": torch.zeros(3)}, base / "foreign.pt")
    (base / "text.pt").write_text("hello")
    return {"base": base, "run": run, "env": env_with_cache(cache), "photo": str(photo)}


def run_cli(setup, *args):
    return finish(
        start([a.format(**{k: str(v) for k, v in setup.items()}) for a in args], setup["env"])
    )


def test_sample_grid(setup):
    code, out, err = run_cli(
        setup,
        "sample",
        "--checkpoint",
        "{run}",
        "-t",
        "0.5,0.9",
        "-n",
        "6",
        "--out",
        "{base}/s.png",
    )
    assert code == 0, err
    assert "12 samples, 0 non-finite" in out
    assert Image.open(setup["base"] / "s.png").size[0] > 6 * 16


def test_table1_from_a_checkpoint(setup):
    code, out, err = run_cli(
        setup,
        "squares",
        "--checkpoint",
        "{run}",
        "-t",
        "0.2:0.6:0.4",
        "-n",
        "6",
        "--out",
        "{base}/t1",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[-2:] == ["0.2", "0.6"]
    rows = {
        line.rsplit(None, 2)[0].strip(): line.split()[-2:]
        for line in lines[1:]
        if len(line.split()) > 2
    }
    assert rows["theoretical E = t²"] == ["0.04", "0.36"]
    assert rows["samples per t"] == ["6", "6"] and rows["non-finite samples"] == ["0", "0"]
    # the CSV's counts per bucket give the printed shares and, with no 4+, the printed E
    with open(setup["base"] / "t1" / "table1.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["t"] for row in table] == ["0.2", "0.6"]
    for i, row in enumerate(table):
        counts = [int(row[f"count_{k}"]) for k in ("0", "1", "2", "3", "4+")]
        assert sum(counts) == int(row["finite"]) == 6 and row["nonfinite"] == "0"
        assert counts[4] == 0  # no sample of this tiny model has four squares
        for k, count in enumerate(counts):
            label = f"{k} square{'s' if k != 1 else ''}" if k < 4 else "4+ squares"
            assert rows[label][i] == f"{100 * count / 6:.0f}", (label, rows[label])
        empirical = sum(k * c for k, c in enumerate(counts)) / 6
        assert rows["empirical E"][i] == f"{empirical:.2f}"
    for name in ("table1.png", "contact-sheet.png"):
        assert (setup["base"] / "t1" / name).is_file()


def test_squares_in_given_images(setup):
    code, out, err = run_cli(setup, "squares", "{photo}", "--square", "10")
    assert code == 0, err
    assert "1 square at (top,left,size) (8,7,10)" in out  # 40×30 → centre crop 30×30: left 12−5


def test_impute_files_and_heldout_items(setup):
    code, out, err = run_cli(
        setup,
        "impute",
        "{photo}",
        "heldout:1",
        "--checkpoint",
        "{run}",
        "--method",
        "alpha",
        "--alpha",
        "0.2:1.0:0.4",
        "--keep-observed",
        "--out",
        "{base}/imp",
    )
    assert code == 0, err
    assert "resized to 16" in err  # said once, for the photo
    assert "square from the detector" in out and "square from the dataset" in out
    names = sorted(os.listdir(setup["base"] / "imp"))
    assert "photo-alpha0.60.png" in names and "heldout-1-strip.png" in names
    assert "overview.png" in names


def test_impute_by_hand_with_iterations(setup):
    code, out, err = run_cli(
        setup,
        "impute",
        "{photo}",
        "--checkpoint",
        "{run}",
        "--square",
        "2,3,5",
        "--method",
        "alpha",
        "--iterations",
        "2",
        "--out",
        "{base}/imp2",
    )
    assert code == 0, err
    assert "square from --square, 2 iterations" in out


def _table(out, first_column_width):
    """The printed table rows whose first column is `first_column_width` wide → {label: values}."""
    rows = {}
    for line in out.splitlines():
        label, values = line[:first_column_width].strip(), line[first_column_width:].split()
        if label and values:
            rows[label] = values
    return rows


def test_latent_norms_and_evaluate(setup):
    code, out, err = run_cli(
        setup, "latent-norms", "--checkpoint", "{run}", "-n", "8", "--out", "{base}/ln"
    )
    assert code == 0, err
    assert out.splitlines()[0] == "‖Φ(x)‖ on held-out images (D = 768, √D = 27.7)"  # 3·16²
    printed = _table(out, 26)
    with open(setup["base"] / "ln" / "latent-norms.csv") as f:
        table = {row["squares"]: row for row in csv.DictReader(f)}
    assert list(table) == [
        "no square",
        "1×1",
        "2×2",
        "4×4 (trained)",
        "8×8",
        "1 × 4×4 (trained)",
        "2 × 4×4",
    ]
    for label, row in table.items():
        assert printed[label][0] == row["n"] == "8", label
        assert float(printed[label][1]) == pytest.approx(float(row["mean"]), abs=0.005), label
    # one trained square is the same variant, measured once: the same numbers
    assert printed["4×4 (trained)"] == printed["1 × 4×4 (trained)"]
    assert printed["no square"] != printed["8×8"]

    code, out, err = run_cli(
        setup,
        "evaluate",
        "--checkpoint",
        "{run}",
        "-n",
        "8",
        "--alpha",
        "0.5,1",
        "--iterations",
        "2",
        "--steps",
        "10",
        "--posterior-warmup",
        "3",
        "--posterior-steps",
        "3",
        "--out",
        "{base}/ev",
    )
    assert code == 0, err
    with open(setup["base"] / "ev" / "evaluation.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["family"] for r in table[:-3]} == {"square", "centre", "rectangles", "pixels"}
    rows = [r for r in table[:-3] if r["family"] == "square"] + table[-3:]
    lines = out.splitlines()
    assert lines[0].startswith("held-out images: 8, 1 square(s) of 4 px each")
    # every row printed as written to the CSV (RMSE to 4 decimals)
    for row in rows[:-3]:
        alpha = f"{float(row['alpha']):g}" if row["alpha"] else "—"
        line = next(line for line in lines if line.startswith(f"{row['method']:<30}{alpha:>6}"))
        assert line[36:].split()[:2] == [
            f"{float(row['rmse_in']):.4f}",
            f"{float(row['psnr_in']):.2f}",
        ], line
    # the best alpha of each α method is the one whose RMSE in the square is smallest
    for method in ("flow", "flow + keep observed", "flow + keep observed ×2"):
        best = min((r for r in rows if r["method"] == method), key=lambda r: float(r["rmse_in"]))
        grey = next(r for r in rows if r["method"] == "grey fill")
        assert (
            f"best alpha for {method}: {float(best['alpha']):g} (RMSE in the square "
            f"{float(best['rmse_in']):.4f}; grey fill {float(grey['rmse_in']):.4f}"
        ) in out
    masked, clean, gap = (float(r["rmse_in"]) for r in rows[-3:])
    assert lines[-2] == (
        f"held-out bits/dim: masked {masked:.4f}, clean {clean:.4f}, "
        f"gap (masked − clean) {gap:+.4f}"
    )
    # each family's table prints the per-image scores the CSV holds, the α methods at their best
    for family in ("square", "centre", "rectangles", "pixels"):
        start = next(i for i, line in enumerate(lines) if line.startswith(f"holes: {family}, "))
        for line in lines[start + 2 :]:
            if line.startswith(("holes: ", "posterior (MALA): ", "held-out bits/dim")):
                break
            label, cells = line[:36].rstrip(), line[36:].split()
            method, _, alpha = label.partition(", α=")
            row = next(
                r
                for r in table[:-3]
                if r["family"] == family
                and r["method"] == method
                and (not alpha or float(r["alpha"]) == float(alpha))
            )
            assert cells[0] == f"{float(row['rmse_hole']):.4f}", line
            assert cells[4] == f"{float(row['crps']):.4f}", line
            sampler = method == "posterior (MALA)"
            assert cells[5] == (f"{float(row['coverage_50']):.3f}" if sampler else "—"), line


BAD = {
    "missing checkpoint": (["sample", "--checkpoint", "{base}/nope"], "not found"),
    "foreign checkpoint": (["sample", "--checkpoint", "{base}/foreign.pt"], "not a missingglow"),
    "not a torch file": (["squares", "--checkpoint", "{base}/text.pt"], "cannot read checkpoint"),
    "alpha zero": (["impute", "{photo}", "--checkpoint", "{run}", "--alpha", "0"], "(0, 1]"),
    "alpha above one": (["evaluate", "--checkpoint", "{run}", "--alpha", "0.5,1.5"], "(0, 1]"),
    "alpha not a number": (
        ["impute", "{photo}", "--checkpoint", "{run}", "--alpha", "abc"],
        "must be a number",
    ),
    "negative temperature": (["sample", "--checkpoint", "{run}", "-t", "-0.5"], "temperature"),
    "NaN temperature": (["squares", "--checkpoint", "{run}", "-t", "nan"], "temperature"),
    "n zero": (["sample", "--checkpoint", "{run}", "-n", "0"], "0 is not in the range x>=1"),
    "n negative": (["squares", "--checkpoint", "{run}", "-n", "-3"], "-3 is not in the range x>=1"),
    "unreadable image": (["impute", "{base}/broken.png", "--checkpoint", "{run}"], "cannot read"),
    "missing image": (["squares", "{base}/nothing.png"], "not found"),
}


SUBPROCESS = ("missing checkpoint", "unreadable image")  # in a fresh Python process each


@pytest.fixture(scope="module")
def bad_results(setup):
    """The bad invocations: SUBPROCESS's as a user meets them, at once, the rest in-process."""

    def args(name):
        return [a.format(**{k: str(v) for k, v in setup.items()}) for a in BAD[name][0]]

    procs = {n: start(args(n), setup["env"]) for n in SUBPROCESS}
    cache = {"MISSINGGLOW_CACHE": setup["env"]["MISSINGGLOW_CACHE"]}
    results = {}
    for n in BAD:
        if n not in SUBPROCESS:
            p = run_in_process(args(n), env=cache)
            results[n] = p.returncode, p.stdout, p.stderr
    results.update({n: finish(p) for n, p in procs.items()})
    return results


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_line(bad_results, case):
    line = error_line(*bad_results[case], ignore=("Warning", "_conversion_method_template"))
    assert BAD[case][1] in line, line
