"""`squares --posterior`: grey holes counted among posterior completions of held-out images. The
pixel rule on hand-made completions, the detector's verdict, the CSV's columns and rows, one call
on a tiny run (two runs, one curve each) and the bad inputs that get one error line."""

import csv
import math
import shutil

import pytest
import torch

from missingglow.analysis import conditional_table1 as ct
from missingglow.analysis.squares import Square, detect, detector_sizes_for
from missingglow.errors import UserError

from helpers import env_with_cache, error_line, run_in_process, tiny_run

S, K, TOP, LEFT = 16, 5, 4, 6


def hole():
    mask = torch.zeros(1, 1, S, S, dtype=torch.bool)
    mask[..., TOP : TOP + K, LEFT : LEFT + K] = True
    return mask


def picture(gen):
    """A colourful, busy background whose pixels are far from grey, so the hole's sides are
    edges."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, S), torch.linspace(0, 1, S), indexing="ij")
    base = torch.stack([0.15 + 0.2 * ys, 0.75 - 0.1 * xs, 0.2 + 0.1 * xs * ys])
    return (base + 0.02 * torch.rand(3, S, S, generator=gen)).clamp(0, 1)


def completions(gen):
    """Four completions of one picture: a grey hole, a grey hole with noise inside the tolerance,
    a textured hole, and a hole grey on its left half only."""
    grey = ct.hole_grey(5)
    inside = (slice(None), slice(TOP, TOP + K), slice(LEFT, LEFT + K))
    texture = torch.zeros(3, K, K)
    texture[:, ::2] = 0.2  # stripes 0.2 either side of grey: far outside the tolerance
    texture[:, 1::2] = -0.2
    out = []
    for fill in (
        torch.full((3, K, K), grey),
        grey + (0.008 * torch.randn(3, K, K, generator=gen)).clamp(-0.03, 0.03),
        grey + texture,
        torch.cat([torch.full((3, K, 3), grey), (grey + texture)[..., 3:]], dim=-1),
    ):
        image = picture(gen)
        image[inside] = fill
        out.append(image)
    return torch.stack(out)


def test_pixel_rule_on_hand_made_holes(gen):
    images = completions(gen)
    share = ct.grey_fraction(images, hole(), 5)
    assert share[0] == share[1] == 1.0  # noise up to 0.03 stays within 1/32
    assert share[2] == 0.0
    assert share[3] == pytest.approx(3 / 5)  # three of five columns grey: below GREY_SHARE
    assert ct.grey_by_pixels(images, hole(), 5) == [True, True, False, False]
    # one pixel of the noisy hole pushed out: 24 of 25 pixels (96 %) still pass
    images[1, 0, TOP, LEFT] += 0.1
    assert ct.grey_fraction(images, hole(), 5)[1] == pytest.approx(24 / 25)
    assert ct.grey_by_pixels(images, hole(), 5)[1]
    # non-finite completions are no verdict, and the grey is the hole's as the model shows it
    images[2, 0, 0, 0] = float("nan")
    assert ct.grey_by_pixels(images, hole(), 5)[2] is None
    assert ct.hole_grey(5) == pytest.approx(132 / 255) and ct.hole_grey(8) == pytest.approx(
        128 / 255
    )


def test_detector_verdict_matches_the_hole(gen):
    images = completions(gen)
    found = detect(images, detector_sizes_for(K, S))
    holes = [[(TOP, LEFT, K)]] * len(images)
    assert ct.grey_by_detector(found, holes)[0] and not ct.grey_by_detector(found, holes)[2]
    # a square elsewhere, or one that overlaps the hole by less than half, is no grey hole
    far, off = Square(10, 0, K, 1.0), Square(TOP + 3, LEFT + 3, K, 1.0)
    on = Square(TOP + 1, LEFT, K, 1.0)  # IoU 20/30
    assert ct.grey_by_detector([[far], [off], [on], None], [[(TOP, LEFT, K)]] * 4) == [
        False,
        False,
        True,
        None,
    ]
    # with two squares per image, one found is enough
    assert ct.grey_by_detector([[on]], [[(0, 0, K), (TOP, LEFT, K)]]) == [True]


def table(run, shares):
    rows = [
        {
            "t": t,
            "images": 2,
            "completions": 2 if t is None else 6,
            "finite": 2 if t is None else 5,
            "nonfinite": 0 if t is None else 1,
            "detector": d,
            "pixels": p,
            "share_detector": 100 * d / (2 if t is None else 5),
            "share_pixels": 100 * p / (2 if t is None else 5),
            "acceptance": float("nan") if t is None else 0.5,
        }
        for t, (d, p) in shares.items()
    ]
    return {"run": run, "rows": rows, "samples": 3, "warmup": 4, "steps": 5, "gamma": 0.01}


def test_csv_columns_and_rows(tmp_path):
    tables = [
        table("runs/naive", {None: (1, 0), 0.5: (2, 1), 1.0: (4, 3)}),
        table("runs/complete", {None: (0, 0), 0.5: (0, 0), 1.0: (1, 0)}),
    ]
    path = ct.conditional_csv(tmp_path / "c.csv", tables)
    with open(path) as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ct.CSV_HEADER
    assert [(r["run"], r["temperature"]) for r in got] == [
        ("runs/naive", "MAP"),
        ("runs/naive", "0.5"),
        ("runs/naive", "1"),
        ("runs/complete", "MAP"),
        ("runs/complete", "0.5"),
        ("runs/complete", "1"),
    ]
    row = got[2]
    assert (row["completions"], row["finite"], row["nonfinite"]) == ("6", "5", "1")
    assert (row["grey_detector"], row["grey_pixels"]) == ("4", "3")
    assert (row["share_detector_pct"], row["share_pixels_pct"]) == ("80.00", "60.00")
    assert (row["samples_per_image"], row["warmup"], row["steps"]) == ("3", "4", "5")
    assert got[0]["acceptance"] == "nan" and row["acceptance"] == "0.5000"
    assert ct.run_names(tables) == ["naive", "complete"]
    assert ct.run_names([tables[0], tables[0]]) == ["runs/naive", "runs/naive"]


def test_request_checks():
    for ts, n, samples, words in (
        ([0.5, 0.0], 4, 2, "above 0"),
        ([], 4, 2, "at least one temperature"),
        ([0.5], 0, 2, "held-out images"),
        ([0.5], 4, 0, "completions per image"),
    ):
        with pytest.raises(UserError, match=words):
            ct.check_request(ts, n, samples)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The analysis tests' tiny run, a copy of it under another name, and two whose configs say
    they were trained without squares (square side 0, square count 0)."""
    from missingglow.training.checkpoint import load_model, save_checkpoint

    base = tmp_path_factory.mktemp("conditional")
    first = tiny_run(str(base / "naive"), str(base / "cache"))
    shutil.copytree(first, base / "other")
    model, payload = load_model(first)
    for name, change in (("plain", dict(square=0)), ("none", dict(squares=0))):
        save_checkpoint(str(base / name), dict(payload, config=dict(payload["config"], **change)))
    return {"base": base, "naive": first, "other": str(base / "other")}, env_with_cache(
        base / "cache"
    )


def test_two_runs_end_to_end(runs):
    paths, env = runs
    out = paths["base"] / "out"
    args = ["squares", "--posterior", "--checkpoint", paths["naive"]]
    args += ["--checkpoint", paths["other"], "-t", "0.5,1", "-n", "3", "--samples", "2"]
    args += ["--posterior-warmup", "2", "--posterior-steps", "2", "--out", out]
    done = run_in_process(args, env=env)
    assert done.returncode == 0, done.stderr
    with open(out / "conditional_table1.csv") as f:
        got = list(csv.DictReader(f))
    assert [(r["run"], r["temperature"]) for r in got] == [
        (p, t) for p in (paths["naive"], paths["other"]) for t in ("MAP", "0.5", "1")
    ]
    for r in got:
        samples = 1 if r["temperature"] == "MAP" else 2
        assert r["images"] == "3" and int(r["completions"]) == 3 * samples
        finite = int(r["finite"])
        assert finite + int(r["nonfinite"]) == int(r["completions"])
        for measure in ("detector", "pixels"):
            count, share = int(r[f"grey_{measure}"]), float(r[f"share_{measure}_pct"])
            assert 0 <= count <= finite and math.isclose(share, 100 * count / finite, abs_tol=0.01)
        assert r["recall_square"] == "4" and r["warmup"] == "2" and r["steps"] == "2"
    # the same run under two names gives the same numbers: draws depend on (seed, t) only
    keys = ("grey_detector", "grey_pixels", "acceptance")
    assert [[r[k] for k in keys] for r in got[:3]] == [[r[k] for k in keys] for r in got[3:]]
    # the printed table agrees with the CSV, and the recall is printed once for two alike runs
    lines = done.stdout.splitlines()
    head = [line for line in lines if line.startswith("temperature t")]
    assert head and head[0].split()[-3:] == ["MAP", "0.5", "1"]
    printed = [line.split()[-3:] for line in lines if line.startswith("  by the pixels")]
    assert printed[0] == [f"{float(r['share_pixels_pct']):.0f}" for r in got[:3]]
    assert sum("share of faint squares the counter finds" in line for line in lines) == 1
    assert any(line.startswith("grey by the pixels") for line in lines)
    for name in (ct.PLOT_NAME, ct.SHEET_NAME):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize(
    "args, words",
    [
        (["--checkpoint", "{naive}", "-t", "0,0.5"], "must be above 0"),
        (["--checkpoint", "{none}"], "trained without grey squares"),
        (["--checkpoint", "{plain}"], "square"),
        (["--checkpoint", "{naive}", "-n", "0"], "0 is not in the range x>=1"),
        (["--checkpoint", "{naive}", "--samples", "0"], "0 is not in the range x>=1"),
        (["--checkpoint", "{naive}", "--square", "4"], "leave out IMAGES, --square"),
    ],
    ids=["zero temperature", "no squares", "square side 0", "no images", "no samples", "square"],
)
def test_bad_input_is_one_error_line(runs, args, words):
    paths, env = runs
    paths = dict(paths, plain=str(paths["base"] / "plain"), none=str(paths["base"] / "none"))
    args = ["squares", "--posterior", *[a.format(**paths) for a in args]]
    done = run_in_process(args, env=env)
    assert words in error_line(done.returncode, done.stdout, done.stderr)


def test_sampler_options_need_posterior(runs):
    paths, env = runs
    done = run_in_process(["squares", "--checkpoint", paths["naive"], "--samples", "2"], env=env)
    assert "only go with --posterior" in error_line(done.returncode, done.stdout, done.stderr)
    two = ["squares", "--checkpoint", paths["naive"], "--checkpoint", paths["other"]]
    done = run_in_process(two, env=env)
    assert "several are for --posterior" in error_line(done.returncode, done.stdout, done.stderr)
