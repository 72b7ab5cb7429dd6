"""The analysis commands as a user meets them: run in a subprocess, files written, numbers printed,
and bad input stated in one line with a non-zero exit and no traceback."""
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from helpers import env_with_cache, tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(args, env):
    return subprocess.Popen([sys.executable, "-m", "missingglow", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    cache = base / "cache"
    run = tiny_run(str(base / "run"), str(cache))
    photo = base / "photo.jpg"   # a 40×30 greyscale photo with a grey square: resized, cropped
    img = Image.new("L", (40, 30), 30)
    img.paste(128, (12, 8, 22, 18))
    img.save(photo)
    (base / "broken.png").write_bytes(b"not a png at all")
    torch.save({"weights": torch.zeros(3)}, base / "foreign.pt")
    (base / "text.pt").write_text("hello")
    return {"base": base, "run": run, "env": env_with_cache(cache), "photo": str(photo)}


def run_cli(setup, *args):
    return finish(start([a.format(**{k: str(v) for k, v in setup.items()}) for a in args],
                        setup["env"]))


def test_sample_grid(setup):
    code, out, err = run_cli(setup, "sample", "--checkpoint", "{run}", "-t", "0.5,0.9", "-n", "6",
                             "--out", "{base}/s.png")
    assert code == 0, err
    assert "12 samples, 0 non-finite" in out
    assert Image.open(setup["base"] / "s.png").size[0] > 6 * 16


def test_table1_from_a_checkpoint(setup):
    code, out, err = run_cli(setup, "squares", "--checkpoint", "{run}", "-t", "0.2:0.6:0.4", "-n",
                             "6", "--out", "{base}/t1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[-2:] == ["0.2", "0.6"]
    assert any(line.startswith("theoretical E = t²") and line.split()[-2:] == ["0.04", "0.36"]
               for line in lines)
    assert "non-finite samples" in out
    for name in ("table1.csv", "table1.png", "contact-sheet.png"):
        assert (setup["base"] / "t1" / name).is_file()


def test_squares_in_given_images(setup):
    code, out, err = run_cli(setup, "squares", "{photo}", "--square", "10")
    assert code == 0, err
    assert "1 square at (top,left,size) (8,7,10)" in out   # 40×30 → centre crop 30×30: left 12−5


def test_impute_files_and_heldout_items(setup):
    code, out, err = run_cli(setup, "impute", "{photo}", "heldout:1", "--checkpoint", "{run}",
                             "--method", "alpha", "--alpha", "0.2:1.0:0.4", "--keep-observed",
                             "--out", "{base}/imp")
    assert code == 0, err
    assert "resized to 16" in err                           # said once, for the photo
    assert "square from the detector" in out and "square from the dataset" in out
    names = sorted(os.listdir(setup["base"] / "imp"))
    assert "photo-alpha0.60.png" in names and "heldout-1-strip.png" in names
    assert "overview.png" in names


def test_impute_by_hand_with_iterations(setup):
    code, out, err = run_cli(setup, "impute", "{photo}", "--checkpoint", "{run}", "--square",
                             "2,3,5", "--method", "alpha", "--iterations", "2", "--out",
                             "{base}/imp2")
    assert code == 0, err
    assert "square from --square, 2 iterations" in out


def test_latent_norms_and_evaluate(setup):
    code, out, err = run_cli(setup, "latent-norms", "--checkpoint", "{run}", "-n", "8", "--out",
                             "{base}/ln")
    assert code == 0, err
    assert "no square" in out and "2 × 4×4" in out
    code, out, err = run_cli(setup, "evaluate", "--checkpoint", "{run}", "-n", "8", "--alpha",
                             "0.5,1", "--iterations", "2", "--out", "{base}/ev")
    assert code == 0, err
    assert "best alpha for flow" in out and "gap (masked − clean)" in out
    assert "mean-colour fill" in out
    assert (setup["base"] / "ev" / "evaluation.csv").is_file()


BAD = {
    "missing checkpoint": (["sample", "--checkpoint", "{base}/nope"], "not found"),
    "foreign checkpoint": (["sample", "--checkpoint", "{base}/foreign.pt"], "not a missingglow"),
    "not a torch file": (["squares", "--checkpoint", "{base}/text.pt"], "cannot read checkpoint"),
    "alpha zero": (["impute", "{photo}", "--checkpoint", "{run}", "--alpha", "0"], "(0, 1]"),
    "alpha above one": (["evaluate", "--checkpoint", "{run}", "--alpha", "0.5,1.5"], "(0, 1]"),
    "alpha not a number": (["impute", "{photo}", "--checkpoint", "{run}", "--alpha", "abc"],
                           "must be a number"),
    "negative temperature": (["sample", "--checkpoint", "{run}", "-t", "-0.5"], "temperature"),
    "NaN temperature": (["squares", "--checkpoint", "{run}", "-t", "nan"], "temperature"),
    "n zero": (["sample", "--checkpoint", "{run}", "-n", "0"], "at least 1"),
    "n negative": (["squares", "--checkpoint", "{run}", "-n", "-3"], "at least 1"),
    "unreadable image": (["impute", "{base}/broken.png", "--checkpoint", "{run}"],
                         "cannot read"),
    "missing image": (["squares", "{base}/nothing.png"], "not found"),
}


@pytest.fixture(scope="module")
def bad_results(setup):
    """All the bad invocations, two at a time (each is a fresh Python process)."""
    results, names = {}, list(BAD)
    for i in range(0, len(names), 2):
        procs = {n: start([a.format(**{k: str(v) for k, v in setup.items()}) for a in BAD[n][0]],
                          setup["env"]) for n in names[i:i + 2]}
        results.update({n: finish(p) for n, p in procs.items()})
    return results


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_line(bad_results, case):
    code, out, err = bad_results[case]
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "Warning" not in line and
             "_conversion_method_template" not in line]
    assert len(lines) == 1, err
    assert BAD[case][1] in lines[0], lines[0]
