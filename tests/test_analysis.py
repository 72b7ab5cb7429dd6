"""The analysis pieces in-process: parsing, model/image space, Table 1 with non-finite samples,
imputation that keeps observed pixels, the evaluation's invariants, latent norms, and the plots."""
import math

import pytest
import torch

from missingglow.analysis.options import (
    parse_alphas,
    parse_square,
    parse_temperatures,
    parse_values,
)
from missingglow.analysis.runs import open_run, sample_images
from missingglow.analysis.sheets import contact_sheet, sample_sheet
from missingglow.analysis.table1 import format_table1, square_table, table1_csv, table1_plot
from missingglow.errors import UserError
from missingglow.flow.preprocess import from_model, to_model

from helpers import tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    path = tiny_run(str(tmp_path_factory.mktemp("run")), str(cache))
    mp = pytest.MonkeyPatch()
    mp.setenv("MISSINGGLOW_CACHE", str(cache))
    yield open_run(path)
    mp.undo()


def test_parse_lists_ranges_and_bad_values():
    assert parse_values("0.1:0.5:0.1", "t") == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert parse_values("0.1:1.5:0.1", "t")[-1] == 1.5
    assert len(parse_values("0.1:1.5:0.1", "t")) == 15
    assert parse_alphas("0.6") == [0.6] and parse_alphas("0.2,1") == [0.2, 1.0]
    for bad in ("0", "1.5", "-0.1", "abc", "nan", "0.5:0.1:0.1", ""):
        with pytest.raises(UserError):
            parse_alphas(bad)
    for bad in ("-1", "nan", "inf", "x"):
        with pytest.raises(UserError):
            parse_temperatures(bad)
    assert parse_temperatures("0") == [0.0]
    assert parse_square("1,2,3") == (1, 2, 3)
    with pytest.raises(UserError):
        parse_square("1,2")


def test_model_space_round_trip_is_the_quantised_image():
    images = torch.rand(4, 3, 8, 8)
    back = from_model(to_model(images, 5), 5)
    assert torch.allclose(back, torch.floor(images * 255 / 8) / 32, atol=1e-6)
    x = to_model(images, 5)
    x[1, 0, 0, 0] = float("inf")
    out = from_model(x, 5)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2, 3]]).all()


def test_table1_counts_non_finite_samples_apart(run, monkeypatch):
    real = run.model.sample

    def overflowing(n, temperature, generator=None):
        x = real(n, temperature, generator=generator)
        if temperature > 1:
            x[::2] = float("inf")       # half the samples overflow
        return x

    monkeypatch.setattr(run.model, "sample", overflowing)
    rows = square_table(run, [0.5, 1.2], n=10, seed=0)
    assert [r["nonfinite"] for r in rows] == [0, 5]
    assert [r["finite"] for r in rows] == [10, 5]
    assert sum(rows[1]["counts"]) == 5 and math.isclose(sum(rows[1]["shares"]), 100)
    text = format_table1(rows)
    assert "non-finite samples" in text and text.splitlines()[-2].split()[-1] == "5"
    sheet, bad = contact_sheet([(r["images"], r["found"]) for r in rows], ["a", "b"])
    assert bad == 5 and sheet.size[0] > 0
    image, per_t = sample_sheet(run, [0.5, 1.2], 4, 0)
    assert per_t == [(0.5, 0), (1.2, 2)]


def test_samples_are_seeded_per_temperature(run):
    a = sample_images(run, 3, 0.7, seed=1)
    b = sample_images(run, 3, 0.7, seed=1)
    c = sample_images(run, 3, 0.7, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_table1_files(run, tmp_path):
    rows = square_table(run, [0.1, 0.3], n=4, seed=0)
    table1_csv(tmp_path / "t.csv", rows)
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("t,samples,finite,nonfinite,count_0") and len(lines) == 3
    image = table1_plot(rows)
    assert image.size[0] >= 600 and len(image.getcolors(1 << 20)) > 10   # not a blank canvas


def test_keep_observed_changes_only_the_square(run):
    from missingglow.analysis.impute import heldout_item, restore

    item = heldout_item(run, 0)
    out = restore(run.model, item.image[None], [0.3, 1.0], run.n_bits, item.mask[None],
                  iterations=2)
    observed = from_model(to_model(item.image[None], run.n_bits), run.n_bits)[0]
    outside = ~item.mask.expand(3, -1, -1)
    for result in out[:, 0]:
        assert torch.equal(result[outside], observed[outside])
    # alpha = 1 gives the input back (inverse(forward(x)) = x)
    full = restore(run.model, item.image[None], [1.0], run.n_bits)[0, 0]
    assert torch.allclose(full, observed, atol=2e-3)
    assert not torch.allclose(out[0, 0], observed, atol=1e-3)   # alpha 0.3 changed the square


def test_evaluation_invariants(run):
    from missingglow.analysis.evaluate import best_alpha, evaluate, format_report

    result = evaluate(run, n=8, alphas=[0.5, 1.0], iterations=2)
    rows = {(r["method"], r["alpha"]): r for r in result["rows"]}
    grey = rows[("grey fill", None)]
    # at alpha 1 the flow returns the input: the same error as leaving the grey square in place
    assert math.isclose(rows[("flow", 1.0)]["rmse_in"], grey["rmse_in"], rel_tol=1e-2)
    assert rows[("flow + keep observed", 0.5)]["rmse_out"] == 0
    assert grey["rmse_out"] == 0 and grey["rmse_in"] > 0
    assert rows[("mean-colour fill", None)]["rmse_in"] != grey["rmse_in"]
    assert best_alpha(result["rows"], "flow")["alpha"] in (0.5, 1.0)
    b = result["bpd"]
    assert math.isfinite(b["masked"]) and math.isfinite(b["clean"])
    assert math.isclose(b["gap"], b["masked"] - b["clean"])
    assert "gap (masked − clean)" in format_report(result)


def test_latent_norms(run):
    from missingglow.analysis.latent_norms import format_table, latent_norms, norms_plot, variants

    specs = variants(square=4, count=1, image_size=16)
    assert [s[1] for s in specs if s[3] == "sizes"] == [0, 1, 2, 4, 8]
    assert [s[2] for s in specs if s[3] == "counts"] == [0, 1, 2]
    result = latent_norms(run, n=8)
    norms = result["norms"]
    assert all(len(v) == 8 for v in norms.values())
    assert torch.equal(norms["4×4 (trained)"], norms["1 × 4×4 (trained)"])
    assert not torch.equal(norms["no square"], norms["8×8"])
    assert "√D" in format_table(result)
    assert norms_plot(result).size[1] > 400
