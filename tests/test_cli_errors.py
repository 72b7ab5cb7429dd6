"""The analysis commands' bad inputs, each one line `error: …` saying what is wrong and what to do,
exit code 2 and no traceback; and the same commands on a checkpoint imported from
rosinality/glow-pytorch, which work.

The commands run in this process through `missingglow.cli.main` (the entry point of `python -m
missingglow`): a UserError becomes its one line there, anything else would escape as an exception
and fail the test. tests/test_cli_analysis.py runs a few of them in subprocesses as a user would.
"""

import os
import re

import pytest
import torch
from PIL import Image

from missingglow.cli.analysis_commands import SQUARE_HINT
from missingglow.data.cache import open_dataset
from missingglow.training.checkpoint import load_model

from helpers import error_line, run_in_process, tiny_run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli-errors")
    cache = base / "cache"
    run = tiny_run(str(base / "run"), str(cache))
    model, _ = load_model(run)
    # rosinality's checkpoints are bare state dicts with DataParallel's prefix, in our key layout
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, base / "imported.pt")
    # the import's images are 64 px (load_model's default for a bare state dict): 40 faces
    faces64 = open_dataset(None, 64, cache_dir=str(cache), synthetic_count=40, quiet=True).path
    photo = Image.new("L", (40, 30), 30)  # a grey 10×10 square at (8, 7) once centre-cropped
    photo.paste(128, (12, 8, 22, 18))
    photo.save(base / "photo.png")
    plain = Image.new("RGB", (16, 16), (30, 90, 200))
    for x in range(16):
        plain.putpixel((x, x), (200, 40, 40))  # not flat: nothing for the detector to find
    plain.save(base / "plain.png")
    (base / "empty-run").mkdir()
    (base / "no-runs-here").mkdir()
    return {"base": str(base), "run": run, "cache": str(cache), "faces64": faces64}


@pytest.fixture
def cli(setup, monkeypatch):
    """cli(*args) → (exit code, stdout, stderr), in the fixture's folder (the test's too, so it
    reads what the command wrote); {run} etc. filled in."""
    monkeypatch.chdir(setup["base"])

    def call(*args, cwd=None):
        proc = run_in_process(
            [a.format(**setup) for a in args],
            env={"MISSINGGLOW_CACHE": setup["cache"]},
            cwd=os.path.join(setup["base"], cwd or ""),
        )
        return proc.returncode, proc.stdout, proc.stderr

    return call


BAD = {
    "squares with nothing to count": (
        ["squares"],
        "no-runs-here",
        ["give image files to count squares in, or --checkpoint RUN"],
    ),
    "--square without --keep-observed": (
        ["impute", "photo.png", "--checkpoint", "{run}", "--method", "alpha", "--square", "1,1,4"],
        None,
        ["--square gives the square's place for --keep-observed", "add --keep-observed"],
    ),
    "heldout index past the end": (
        ["impute", "heldout:16", "--checkpoint", "{run}", "--method", "alpha"],
        None,
        ["error: heldout:16: out of range", "has 16 images (heldout:0 to heldout:15)"],
    ),
    "negative heldout index": (
        ["impute", "heldout:-1", "--checkpoint", "{run}", "--method", "alpha"],
        None,
        ["error: heldout:-1: out of range", "(heldout:0 to heldout:15)"],
    ),
    "no grey square in the image": (
        ["impute", "plain.png", "--checkpoint", "{run}", "--method", "alpha", "--keep-observed"],
        None,
        ["error: plain.png: no grey square found", "--square TOP,LEFT,SIZE"],
    ),
    "a misspelt option": (
        ["impute", "photo.png", "--checkpoint", "{run}", "--alpah", "0.6"],
        None,
        ["No such option '--alpah'", "'--alpha'", "see `missingglow impute --help`"],
    ),
    "no images to impute": (
        ["impute", "--checkpoint", "{run}"],
        None,
        ["Missing argument 'IMAGES...'"],
    ),
    "a square place that is not three numbers": (
        ["impute", "photo.png", "--checkpoint", "{run}", "--square", "1,2"],
        None,
        ["Invalid value for '--square': give TOP,LEFT,SIZE in pixels (e.g. 10,20,12)"],
    ),
    "--columns 0": (
        ["sample", "--checkpoint", "{run}", "--columns", "0"],
        None,
        ["Invalid value for '--columns': 0 is not in the range x>=1"],
    ),
    "latent-norms -n 0": (
        ["latent-norms", "--checkpoint", "{run}", "-n", "0"],
        None,
        ["Invalid value for '-n': 0 is not in the range x>=1"],
    ),
    "evaluate --iterations 0": (
        ["evaluate", "--checkpoint", "{run}", "--iterations", "0"],
        None,
        ["Invalid value for '--iterations': 0 is not in the range x>=1"],
    ),
    "run folder without latest or checkpoints": (
        ["sample", "--checkpoint", "empty-run"],
        None,
        ["empty-run is a folder without a `latest` checkpoint", "pass a run folder written by"],
    ),
    "imported checkpoint, evaluate without --square": (
        ["evaluate", "--checkpoint", "imported.pt", "-n", "2"],
        None,
        [
            "imported.pt is an imported checkpoint without a training config",
            "give the square side with --square K",
        ],
    ),
    "imported checkpoint, latent-norms without --square": (
        ["latent-norms", "--checkpoint", "imported.pt", "-n", "2"],
        None,
        ["imported checkpoint without a training config", "--square K", "--data DIR"],
    ),
    "imported checkpoint, a square larger than its images": (
        ["latent-norms", "--checkpoint", "imported.pt", "--square", "65"],
        None,
        ["--square 65 does not fit the checkpoint's 64×64 images; give at most 64"],
    ),
    "imported checkpoint, heldout items": (
        ["impute", "heldout:1", "--checkpoint", "imported.pt"],
        None,
        ["carries no training config", "use a checkpoint written by `missingglow train`"],
    ),
    "a run's own dataset, --square given": (
        ["evaluate", "--checkpoint", "{run}", "--square", "3"],
        None,
        ["--data and --square are for an imported checkpoint", "leave both out"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_saying_what_to_do(cli, case):
    args, cwd, expected = BAD[case]
    line = error_line(*cli(*args, cwd=cwd))
    for text in expected:
        assert text in line, line


def test_evaluate_says_its_error_before_the_progress_bar(cli):
    code, out, err = cli("evaluate", "--checkpoint", "imported.pt", "-n", "2")
    assert "evaluating" not in err and out == ""
    error_line(code, out, err)


# ------------------------------------------------------------ the square-size hint of `squares`


def test_squares_in_images_hints_at_square_only_when_no_size_is_known(cli):
    code, out, err = cli("squares", "photo.png")
    assert code == 0, err
    assert out.strip() == "photo.png: 1 square at (top,left,size) (8,7,10)"
    assert err.strip().splitlines()[-1] == SQUARE_HINT
    assert "--square K (the trained square size) counts more reliably" in SQUARE_HINT
    for args in (["--square", "10"], ["--checkpoint", "{run}"]):
        code, out, err = cli("squares", "photo.png", *args)
        assert code == 0, err
        assert SQUARE_HINT not in err and SQUARE_HINT not in out, args


def test_squares_in_images_counts_the_readable_ones_and_names_the_others(cli):
    code, out, err = cli("squares", "photo.png", "nothing.png", "plain.png", "--square", "10")
    assert code == 2, err
    assert out.strip().splitlines() == [
        "photo.png: 1 square at (top,left,size) (8,7,10)",
        "plain.png: 0 squares",
    ]
    assert err.strip() == "error: nothing.png: image nothing.png not found"


# ------------------------------------------------------- an imported rosinality checkpoint works


def test_imported_checkpoint_samples_and_counts_squares(cli):
    code, out, err = cli(
        "sample",
        "--checkpoint",
        "imported.pt",
        "-t",
        "0.5,0.7",
        "-n",
        "3",
        "--out",
        "imported-samples.png",
    )
    assert code == 0, err
    assert out.strip().splitlines()[-1] == ("wrote imported-samples.png: 6 samples, 0 non-finite")
    with Image.open("imported-samples.png") as image:
        assert image.size[0] > 3 * 64  # 64-px samples, three to a row
    code, out, err = cli(
        "squares", "--checkpoint", "imported.pt", "-t", "0.3", "-n", "4", "--out", "imported-t1"
    )
    assert code == 0, err
    assert any(
        line.startswith("samples per t") and line.split()[-1] == "4" for line in out.splitlines()
    )
    assert os.path.isfile("imported-t1/table1.csv")
    code, out, err = cli("squares", "photo.png", "--checkpoint", "imported.pt")
    assert code == 0, err
    # resized to the import's 64 px: the 10-px square of the 30×30 crop is 21 px or so
    found = out.strip().split("(top,left,size) ")[-1]
    top, left, size = (int(v) for v in found.strip("()").split(","))
    assert abs(top - 17) <= 1 and abs(left - 15) <= 1 and abs(size - 21) <= 1, out


def test_imported_checkpoint_imputes_files(cli):
    code, out, err = cli(
        "impute",
        "photo.png",
        "--checkpoint",
        "imported.pt",
        "--method",
        "alpha",
        "--alpha",
        "0.5,0.9",
        "--keep-observed",
        "--out",
        "imported-alpha",
    )
    assert code == 0, err
    assert "resized to 64" in err
    assert "photo: 2 alpha(s), keeping observed pixels, square from the detector" in out
    assert out.strip().splitlines()[-1] == "wrote 2 restored image(s) to imported-alpha"
    code, out, err = cli(
        "impute",
        "photo.png",
        "--checkpoint",
        "imported.pt",
        "--steps",
        "2",
        "--start",
        "input",
        "--out",
        "imported-invert",
    )
    assert code == 0, err
    found = re.search(r"photo: (\d+) missing pixels from the detector \(1 square\)", out)
    assert found and 20**2 <= int(found.group(1)) <= 22**2, out  # the 21-px square


def test_imported_checkpoint_evaluates_and_measures_latent_norms_on_given_data(cli):
    code, out, err = cli(
        "evaluate",
        "--checkpoint",
        "imported.pt",
        "--data",
        "{faces64}",
        "--square",
        "8",
        "-n",
        "2",
        "--alpha",
        "0.5",
        "--iterations",
        "1",
        "--steps",
        "2",
        "--no-classical",
        "--out",
        "imported-eval",
    )
    assert code == 0, err
    assert out.startswith("held-out images: 2, 1 square(s) of 8 px each")
    assert "best alpha for flow: 0.5" in out
    assert os.path.isfile("imported-eval/evaluation.csv")
    code, out, err = cli(
        "latent-norms",
        "--checkpoint",
        "imported.pt",
        "--data",
        "{faces64}",
        "--square",
        "8",
        "-n",
        "2",
        "--out",
        "imported-norms",
    )
    assert code == 0, err
    assert "D = 12288" in out  # 3·64²
    assert any(
        line.startswith("8×8 (trained)") and line.split()[2] == "2" for line in out.splitlines()
    ), out
