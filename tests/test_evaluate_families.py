"""`evaluate` on several hole families with the posterior sampler: the training square's numbers as
they were before families existed, the same images under every family, every new score present
and in range, and the per-image scores and intervals worked out again by hand."""

import json
import math
import os

import pytest
import torch

from missingglow.analysis.calibration import point_scores, sample_scores
from missingglow.analysis.evaluate import (
    INTERVALS,
    NEW_SCORES,
    POSTERIOR,
    evaluate,
    format_report,
    report_csv,
    report_json,
    write_report,
)
from missingglow.analysis.impute import SAMPLING
from missingglow.analysis.runs import open_run
from missingglow.completion.invert import harmonic_fill
from missingglow.data.mask_families import FAMILIES, family_masks

from helpers import tiny_run

HERE = os.path.dirname(os.path.abspath(__file__))
# the settings tests/expected/evaluate-square-tiny.json was computed with, before families
BEFORE = dict(
    n=6, alphas=[0.5, 1.0], iterations=2, seed=0, classical=False, invert_options=dict(steps=3)
)
SAMPLES = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    path = tiny_run(str(tmp_path_factory.mktemp("run")), str(cache))
    mp = pytest.MonkeyPatch()
    mp.setenv("MISSINGGLOW_CACHE", str(cache))
    yield open_run(path)
    mp.undo()


@pytest.fixture(scope="module")
def evaluated(run):
    return evaluate(
        run, **BEFORE, masks=FAMILIES, samples=SAMPLES, posterior_options=dict(warmup=3, steps=4)
    )


def expected_square():
    with open(os.path.join(HERE, "expected", "evaluate-square-tiny.json")) as f:
        return json.load(f)


def assert_as_before(rows, bpd):
    """Every row and value of the stored result is there, equal up to float noise."""
    stored = expected_square()
    by_key = {(r["method"], r["alpha"]): r for r in rows}
    for old in stored["rows"]:
        new = by_key[(old["method"], old["alpha"])]
        for key, value in old.items():
            if key in ("rmse_in", "rmse_out"):
                assert new[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (old, key)
            elif key in ("psnr_in", "psnr_out"):
                if value == "inf":
                    assert new[key] == math.inf, (old, key)
                elif old[key.replace("psnr", "rmse")] > 1e-4:  # not a float-noise RMSE
                    assert new[key] == pytest.approx(value, rel=1e-5), (old, key)
            else:
                assert new[key] == value, (old, key)
    for key, value in stored["bpd"].items():
        assert bpd[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_the_square_family_scores_as_before_families_existed(run, evaluated):
    assert_as_before(evaluated["rows"], evaluated["bpd"])
    # and alone, without the sampler, with exactly the rows it had
    alone = evaluate(run, **BEFORE)
    assert_as_before(alone["rows"], alone["bpd"])
    assert [(r["method"], r["alpha"]) for r in alone["rows"]] == [
        (r["method"], r["alpha"]) for r in expected_square()["rows"]
    ]
    assert list(alone["families"]) == ["square"] and alone["posterior"] is None


def test_every_family_scores_every_method_on_the_same_images(evaluated):
    families = evaluated["families"]
    assert list(families) == list(FAMILIES)
    assert evaluated["rows"] == families["square"]["rows"]
    methods = [(r["method"], r["alpha"]) for r in evaluated["rows"]]
    assert methods[-2:] == [("invert", None), (POSTERIOR, None)]
    original = families["square"]["examples"]["original"]
    inputs = {}
    for family, part in families.items():
        assert [(r["method"], r["alpha"]) for r in part["rows"]] == methods, family
        assert all(r["images"] == 6 and r["family"] == family for r in part["rows"])
        assert torch.equal(part["examples"]["original"], original), family
        inputs[family] = part["examples"]["input"]
    for a in FAMILIES:  # the holes differ: different inputs, same originals
        for b in FAMILIES:
            assert a == b or not torch.equal(inputs[a], inputs[b]), (a, b)
    shares = {f: part["hole_share"] for f, part in families.items()}
    assert shares["square"] == pytest.approx(16 / 256)
    assert shares["centre"] == pytest.approx(0.25) and shares["pixels"] == pytest.approx(0.5)
    assert 0.10 <= shares["rectangles"] <= 0.42


def test_every_new_score_is_there_and_in_range(evaluated):
    for family, part in evaluated["families"].items():
        for r in part["rows"]:
            sampler = r["method"] == POSTERIOR
            assert r["samples"] == (SAMPLES if sampler else 1)
            for key in NEW_SCORES:
                if key in INTERVALS and not sampler:
                    assert r[key] is None, (family, r["method"], key)
                    continue
                assert math.isfinite(r[key]), (family, r["method"], key)
            assert -1 <= r["ssim_hole"] <= 1 and r["crps"] >= 0 and r["best_rmse"] >= 0
            if sampler:
                assert 0 <= r["coverage_50"] <= r["coverage_90"] <= 1, r
                assert 0 <= r["width_50"] <= r["width_90"], r
                assert r["crps"] > 0 and r["rmse_out"] == 0
            else:  # a point forecast: CRPS is its mean absolute error, best of one its RMSE
                assert r["best_rmse"] == pytest.approx(r["rmse_hole"], rel=1e-9)
    p = evaluated["posterior"]
    assert (p["samples"], p["warmup"], p["steps"]) == (SAMPLES, 3, 4)
    assert p["temperature"] == SAMPLING["temperature"]
    assert all(0 <= a <= 1 for a in p["acceptance"].values())


def test_per_image_scores_by_hand(run, evaluated):
    """The centre family's harmonic fill, from its input and the family's holes: each score the
    mean over images of calibration.py's per-image value; and the sampler's intervals from its
    draws, reproduced from the examples of the posterior's mean."""
    part = evaluated["families"]["centre"]
    examples = part["examples"]
    indices = run_heldout_indices(run)[:6]
    mask = family_masks("centre", 0, indices, 16)
    filled = harmonic_fill(examples["input"], mask)
    torch.testing.assert_close(examples["harmonic fill"], filled)
    by_hand = point_scores(filled, examples["original"], mask)
    row = next(r for r in part["rows"] if r["method"] == "harmonic fill")
    for key, name in (
        ("rmse_hole", "rmse"),
        ("psnr_hole", "psnr"),
        ("ssim_hole", "ssim"),
        ("psnr_whole", "psnr_whole"),
    ):
        assert row[key] == pytest.approx(by_hand[name].mean().item(), rel=1e-6), key
    one = sample_scores(filled[None], examples["original"], mask)
    assert row["crps"] == pytest.approx(one["crps"].mean().item(), rel=1e-6)
    absolute = ((filled - examples["original"]).abs() * mask).sum((1, 2, 3)) / (
        3 * mask.sum((1, 2, 3))
    )
    assert row["crps"] == pytest.approx(absolute.double().mean().item(), rel=1e-5)
    # the sampler's mean keeps the observed pixels; its spread is zero outside the hole
    mean = examples[POSTERIOR]
    outside = ~mask.expand_as(mean)
    assert torch.equal(mean[outside], examples["input"][outside])
    spread = examples[f"{POSTERIOR}, spread"]
    assert spread[outside].abs().max() == 0 and spread[~outside].max() == 1


def run_heldout_indices(run):
    from missingglow.data.datasets import MaskedImages, dataset_of

    c = run.config
    return MaskedImages(
        dataset_of(c, run.image_size), c["square"], 1, c["seed"], split="heldout"
    ).indices


def test_reports_carry_every_family(evaluated, tmp_path):
    import csv

    paths = write_report(evaluated, str(tmp_path / "ev"), str(tmp_path / "e.json"))
    assert [os.path.basename(p) for p in paths] == [
        "evaluation.csv",
        "evaluation.png",
        "comparison.png",
        "comparison-centre.png",
        "comparison-rectangles.png",
        "comparison-pixels.png",
        "e.json",
    ]
    with open(tmp_path / "ev" / "evaluation.csv") as f:
        table = list(csv.DictReader(f))
    rows = [r for part in evaluated["families"].values() for r in part["rows"]]
    assert len(table) == len(rows) + 3
    for line, r in zip(table[:-3], rows, strict=True):
        assert (line["method"], line["family"]) == (r["method"], r["family"])
        for key in NEW_SCORES:
            if r[key] is None:
                assert line[key] == "", key
            else:
                assert float(line[key]) == pytest.approx(r[key], abs=1e-6), key
    saved = json.loads((tmp_path / "e.json").read_text())
    report_json(str(tmp_path / "again.json"), evaluated)
    assert (tmp_path / "again.json").read_text() == (tmp_path / "e.json").read_text()
    assert saved["masks"] == list(FAMILIES)
    assert saved["families"]["pixels"]["hole_share"] == pytest.approx(0.5)
    report = format_report(evaluated)
    for family in FAMILIES:
        assert f"holes: {family}, " in report
    assert report.splitlines()[-1].startswith("held-out bits/dim: masked ")
    report_csv(str(tmp_path / "direct.csv"), evaluated)
    assert (tmp_path / "direct.csv").read_text() == (tmp_path / "ev" / "evaluation.csv").read_text()


def test_bad_families_and_sample_counts_are_user_errors(run):
    from missingglow.errors import UserError

    for masks in (("square", "circles"), (), ("centre", "centre")):
        with pytest.raises(UserError, match="mask families are distinct names from square,centre"):
            evaluate(run, 2, [0.5], masks=masks)
    with pytest.raises(UserError, match="samples must be 0"):
        evaluate(run, 2, [0.5], samples=-1)
    for options in (dict(temperature=0), dict(steps=-1)):
        with pytest.raises(UserError, match="the posterior needs gamma and temperature above 0"):
            evaluate(run, 2, [0.5], samples=2, posterior_options=options)
    with pytest.raises(UserError, match="gamma=0"):
        evaluate(run, 2, [0.5], samples=2, invert_options=dict(gamma=0))
