"""The analysis pieces in-process: parsing, model/image space, Table 1 with non-finite samples,
imputation that keeps observed pixels, the evaluation's invariants, latent norms, and the plots."""

import math
import os
import re

import click
import pytest
import torch

from missingglow.analysis.runs import open_run, sample_images, sample_sheet
from missingglow.analysis.table1 import format_table1, square_table, table1_csv, table1_plot
from missingglow.cli import params
from missingglow.flow.preprocess import from_model, to_model
from missingglow.render.sheets import contact_sheet

from helpers import tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    path = tiny_run(str(tmp_path_factory.mktemp("run")), str(cache))
    mp = pytest.MonkeyPatch()
    mp.setenv("MISSINGGLOW_CACHE", str(cache))
    yield open_run(path)
    mp.undo()


def convert(kind, text):
    return kind.convert(text, None, None)


def test_values_types_read_lists_and_ranges():
    assert convert(params.TEMPERATURES, "0.1:0.5:0.1") == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert convert(params.TEMPERATURES, "0.1:1.5:0.1")[-1] == 1.5
    assert len(convert(params.TEMPERATURES, "0.1:1.5:0.1")) == 15
    assert convert(params.TEMPERATURES, "0") == [0.0]
    assert convert(params.ALPHAS, "0.6") == [0.6]
    assert convert(params.ALPHAS, "0.2,1") == [0.2, 1.0]
    assert convert(params.ALPHAS, [0.5]) == [0.5]  # a default already converted passes through


ALPHA, TEMPERATURE = params.ALPHAS, params.TEMPERATURES


@pytest.mark.parametrize(
    "kind,text,message",
    [
        (ALPHA, "0", "alpha must lie in (0, 1]"),
        (ALPHA, "1.5", "not 1.5"),
        (ALPHA, "-0.1", "(0, 1]"),
        (ALPHA, "nan", "(0, 1]"),
        (ALPHA, "", "must be a number"),
        (ALPHA, "abc", "a range like 0.1:1.0:0.1 (start:stop:step), not 'abc'"),
        (ALPHA, "0.5:0.1:0.1", "must be a number"),
        (ALPHA, "0.1:1:0", "must be a number"),
        (ALPHA, "0.1:0.5", "must be a number"),
        (ALPHA, "0.2,1.2", "not 1.2"),
        (TEMPERATURE, "-1", "temperature must be a finite number of 0 or more, not -1"),
        (TEMPERATURE, "nan", "not nan"),
        (TEMPERATURE, "inf", "not inf"),
        (TEMPERATURE, "x", "temperature must be a number"),
        (TEMPERATURE, "0:100000:1", "must be a number"),  # more values than anyone means
    ],
)
def test_values_types_refuse_what_is_not_allowed(kind, text, message):
    with pytest.raises(click.BadParameter, match=re.escape(message)):
        convert(kind, text)


def test_square_place_count_and_finite_range():
    assert convert(params.SQUARE_PLACE, "1,2,3") == (1, 2, 3)
    for bad, message in (
        ("1,2", "TOP,LEFT,SIZE"),
        ("a,b,c", "TOP,LEFT,SIZE"),
        ("-1,0,3", "top and left must be 0 or more"),
        ("0,0,0", "size at least 1"),
    ):
        with pytest.raises(click.BadParameter, match=message):
            convert(params.SQUARE_PLACE, bad)
    assert convert(params.COUNT, "1") == 1
    with pytest.raises(click.BadParameter, match="0 is not in the range x>=1"):
        convert(params.COUNT, "0")
    positive = params.FiniteRange(min=0, min_open=True)
    assert convert(positive, "0.5") == 0.5
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(click.BadParameter):
            convert(positive, bad)


def test_model_space_round_trip_is_the_quantised_image():
    images = torch.rand(4, 3, 8, 8)
    back = from_model(to_model(images, 5), 5)
    # each 8-bit value k comes back as its 5-bit bin's representative: floor(k / 8)·8 + 4
    assert torch.allclose(
        back, (torch.floor(torch.round(images * 255) / 8) * 8 + 4) / 255, atol=1e-6
    )
    x = to_model(images, 5)
    x[1, 0, 0, 0] = float("inf")
    out = from_model(x, 5)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2, 3]]).all()


def test_table1_counts_non_finite_samples_apart(run, monkeypatch):
    real = run.model.sample

    def overflowing(n, temperature, generator=None):
        x = real(n, temperature, generator=generator)
        if temperature > 1:
            x[::2] = float("inf")  # half the samples overflow
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
    assert image.size[0] >= 600 and len(image.getcolors(1 << 20)) > 10  # not a blank canvas


def test_table1_written_where_asked_returns_its_paths(run, tmp_path):
    from missingglow.analysis.table1 import table1_folder, write_table1

    rows = square_table(run, [0.3], n=2, seed=0)
    out = tmp_path / "deep" / "t1"
    paths = write_table1(rows, str(out))
    assert [os.path.relpath(p, out) for p in paths] == [
        "table1.csv",
        "table1.png",
        "contact-sheet.png",
    ]
    assert all(os.path.getsize(p) > 0 for p in paths)
    assert table1_folder(str(tmp_path)) == os.path.join(str(tmp_path), "table1")
    assert table1_folder(str(tmp_path / "model.pt")) == "table1"  # a file: beside the command


def test_squares_counted_in_files_one_failure_beside_the_others(tmp_path):
    from PIL import Image

    from missingglow.analysis.square_counts import count_in_files, format_count

    photo = Image.new("L", (40, 30), 30)  # a 10-px grey square at (8, 7) once centre-cropped
    photo.paste(128, (12, 8, 22, 18))
    photo.save(tmp_path / "photo.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths = [str(tmp_path / n) for n in ("photo.png", "missing.png", "broken.png")]
    counts = count_in_files(paths, square=10)
    assert [c.path for c in counts] == paths
    assert format_count(counts[0]) == f"{paths[0]}: 1 square at (top,left,size) (8,7,10)"
    assert counts[1].found is None and counts[1].error == f"image {paths[1]} not found"
    assert counts[2].found is None and counts[2].error.startswith(f"cannot read {paths[2]}")
    # at a size asked for, the file is resized first: the square doubles with it
    (found,) = count_in_files(paths[:1], square=20, image_size=60)[0].found
    assert (found.top, found.left, found.size) == (16, 14, 20)


def test_keep_observed_changes_only_the_square(run):
    from missingglow.analysis.impute import heldout_item, restore

    item = heldout_item(run, 0)
    out = restore(
        run.model, item.image[None], [0.3, 1.0], run.n_bits, item.mask[None], iterations=2
    )
    observed = from_model(to_model(item.image[None], run.n_bits), run.n_bits)[0]
    outside = ~item.mask.expand(3, -1, -1)
    for result in out[:, 0]:
        assert torch.equal(result[outside], observed[outside])
    # alpha = 1 gives the input back (inverse(forward(x)) = x)
    full = restore(run.model, item.image[None], [1.0], run.n_bits)[0, 0]
    assert torch.allclose(full, observed, atol=2e-3)
    assert not torch.allclose(out[0, 0], observed, atol=1e-3)  # alpha 0.3 changed the square


# ---------------------------------------------------------------- the evaluation, by hand

ALPHAS = [0.5, 1.0]


@pytest.fixture(scope="module")
def heldout(run):
    """The first 8 held-out images, clean and masked, in [0, 1], and their masks built by hand."""
    from missingglow.data.datasets import MaskedImages, dataset_of

    c = run.config
    items = MaskedImages(dataset_of(c, run.image_size), c["square"], 1, c["seed"], split="heldout")
    masked, clean, positions = items.batch(list(range(8)))
    mask = torch.zeros(8, 1, 16, 16, dtype=torch.bool)
    for b, ((top, left),) in enumerate(positions.tolist()):
        mask[b, 0, top : top + 4, left : left + 4] = True
    return items, masked, clean, mask


@pytest.fixture(scope="module")
def evaluated(run):
    from missingglow.analysis.evaluate import evaluate

    return evaluate(
        run, n=8, alphas=ALPHAS, iterations=2, classical=False, invert_options=dict(steps=3)
    )


def _bins(images, bits=5):
    """[0, 1] images → the lower edge of their quantisation bin, j / 2^bits (8-bit value first)."""
    return torch.floor(torch.round(images * 255) / 2 ** (8 - bits)) / 2**bits


def _quantised(images, bits=5):
    """[0, 1] images as the model gives them back: each bin's representative 8-bit value, its
    centre rounded up to a whole value (j·w + w/2 for bins w = 2^(8−bits) values wide)."""
    w = 2 ** (8 - bits)
    return (_bins(images, bits) * 2**bits * w + w // 2) / 255


def _flow_by_hand(model, masked, alpha, mask=None, iterations=1):
    """Φ⁻¹(α·Φ(x)) from model space and back, the observed pixels put back each time."""
    x0 = _bins(masked) - 0.5 + 0.5 / 32  # the bin's centre, in [−0.5, 0.5)
    x = x0
    with torch.no_grad():
        for _ in range(iterations):
            x = model.decode(alpha * model.encode(x))
            x = x if mask is None else torch.where(mask, x, x0)
    return ((x + 0.5) * 256 / 255).clamp(0, 1)  # a centre (j + ½)/32 − ½ to (8j + 4)/255


def _pooled_rmse(out, ref, where):
    """sqrt of the mean squared error over the pixels `where` of the images that are finite."""
    ok = torch.isfinite(out.flatten(1)).all(1)
    where = where.expand(-1, 3, -1, -1)[ok]
    return math.sqrt(((out[ok] - ref[ok]) ** 2)[where].double().mean().item())


def test_evaluation_invariants(run, heldout, evaluated):
    """Each method's images and every row's numbers, recomputed by hand from the held-out images."""
    _, masked, clean, mask = heldout
    examples = evaluated["examples"]
    grey, original = _quantised(masked), _quantised(clean)
    torch.testing.assert_close(examples["input"], grey, rtol=0, atol=1e-6)
    torch.testing.assert_close(examples["original"], original, rtol=0, atol=1e-6)
    torch.testing.assert_close(examples["grey fill"], grey, rtol=0, atol=1e-6)
    # mean-colour fill: inside the square, each channel's mean over the image's observed pixels
    filled = examples["mean-colour fill"]
    for b in range(8):
        for ch in range(3):
            mean = grey[b, ch][~mask[b, 0]].mean()
            assert torch.allclose(filled[b, ch][mask[b, 0]], mean, atol=1e-6), (b, ch)
            assert torch.equal(filled[b, ch][~mask[b, 0]], examples["input"][b, ch][~mask[b, 0]])
    assert not torch.allclose(filled[mask.expand(-1, 3, -1, -1)], torch.tensor(0.5), atol=0.01)
    # the flow's images: alone, keeping the observed pixels, and that twice (the ×2 row)
    for alpha in ALPHAS:
        for key, keep, times in (
            ("flow", None, 1),
            ("flow + keep observed", mask, 1),
            ("flow + keep observed ×2", mask, 2),
        ):
            by_hand = _flow_by_hand(run.model, masked, alpha, keep, times)
            torch.testing.assert_close(
                examples[(key, alpha)],
                by_hand,
                rtol=0,
                atol=1e-5,
                msg=lambda m: f"{key} at alpha {alpha}: {m}",
            )
    once = examples[("flow + keep observed", 0.5)]
    twice = examples[("flow + keep observed ×2", 0.5)]
    assert (once - twice).abs().max() > 1e-3  # the second pass moved the square's pixels
    # every row: RMSE inside the square against the original, outside against the input, pooled
    # over all pixels of all 8 images; PSNR of those; nothing non-finite; 8 images
    rows = evaluated["rows"]
    assert [(r["method"], r["alpha"]) for r in rows] == [
        (m, a) for m in ("flow", "flow + keep observed", "flow + keep observed ×2") for a in ALPHAS
    ] + [("grey fill", None), ("mean-colour fill", None), ("harmonic fill", None), ("invert", None)]
    for r in rows:
        out = examples[r["method"] if r["alpha"] is None else (r["method"], r["alpha"])]
        rmse_in, rmse_out = _pooled_rmse(out, original, mask), _pooled_rmse(out, grey, ~mask)
        assert r["rmse_in"] == pytest.approx(rmse_in, rel=1e-5, abs=1e-7), r
        assert r["rmse_out"] == pytest.approx(rmse_out, rel=1e-5, abs=1e-7), r
        assert r["psnr_in"] == pytest.approx(-20 * math.log10(rmse_in), rel=1e-5), r
        assert r["nonfinite"] == 0 and r["images"] == 8
    by_method = {(r["method"], r["alpha"]): r for r in rows}
    assert by_method[("grey fill", None)]["rmse_in"] > 0.05  # the grey square is no restoration
    assert by_method[("flow", 0.5)]["rmse_out"] > 0.01  # the flow alone changes everything


def _bits_per_dim_by_hand(model, masked, clean):
    """Per image, masked and clean, under one seeded dequantisation noise shared by each pair."""
    from missingglow.seeding import generator

    noise = torch.rand(masked.shape, generator=generator(0, "eval-noise")) / 32
    with torch.no_grad():
        return [
            (-model.log_prob(_bins(images) - 0.5 + noise) / (768 * math.log(2)) + 5).double()
            for images in (masked, clean)
        ]


def test_held_out_bits_per_dim_by_hand(run, heldout, evaluated):
    _, masked, clean, _ = heldout
    by_hand = [bpd.mean().item() for bpd in _bits_per_dim_by_hand(run.model, masked, clean)]
    b = evaluated["bpd"]
    assert b["masked"] == pytest.approx(by_hand[0], rel=1e-6)
    assert b["clean"] == pytest.approx(by_hand[1], rel=1e-6)
    assert b["gap"] == pytest.approx(by_hand[0] - by_hand[1], abs=1e-6)
    assert b["nonfinite"] == 0 and b["images"] == 8


def test_best_alpha_is_the_smallest_rmse_inside_the_square():
    from missingglow.analysis.evaluate import best_alpha, format_report

    def row(method, alpha, rmse_in):
        return {
            "method": method,
            "alpha": alpha,
            "rmse_in": rmse_in,
            "psnr_in": 0.0,
            "rmse_out": 0.0,
            "psnr_out": 0.0,
            "nonfinite": 0,
            "images": 4,
            "seconds_per_image": 0.0,
        }

    rows = [
        row("flow", 0.2, 0.30),
        row("flow", 0.4, 0.12),
        row("flow", 0.6, float("nan")),
        row("flow", 0.8, 0.19),
        row("flow + keep observed", 0.2, 0.05),
        row("flow + keep observed", 0.4, 0.07),
        row("grey fill", None, 0.25),
        row("mean-colour fill", None, 0.01),
    ]
    assert best_alpha(rows, "flow")["alpha"] == 0.4  # the NaN one left out, other methods too
    assert best_alpha(rows, "flow + keep observed")["alpha"] == 0.2
    assert best_alpha([row("flow", 0.2, float("nan"))], "flow") is None
    report = format_report(
        {
            "rows": rows,
            "images": 4,
            "count": 1,
            "square": 4,
            "bpd": {"masked": 5.5, "clean": 5.25, "gap": 0.25, "nonfinite": 0},
        }
    )
    assert (
        "best alpha for flow: 0.4 (RMSE in the square 0.1200; grey fill 0.2500, "
        "mean-colour fill 0.0100)"
    ) in report
    assert "best alpha for flow + keep observed: 0.2 (RMSE in the square 0.0500;" in report
    assert report.splitlines()[-1] == (
        "held-out bits/dim: masked 5.5000, clean 5.2500, gap (masked − clean) +0.2500"
    )


def test_a_non_finite_restoration_is_counted_per_method(run, heldout, monkeypatch):
    """An image whose restoration overflows is counted in its method's row and left out of its
    RMSE, the other methods' rows untouched; an image whose log p overflows, out of bits/dim."""
    from missingglow.analysis.evaluate import evaluate

    decode, log_prob = run.model.decode, run.model.log_prob

    def overflowing_decode(z):
        x = decode(z)
        x[1] = float("inf")  # the second image of every batch
        return x

    def overflowing_log_prob(x):
        lp = log_prob(x)
        lp[2] = float("nan")  # the third
        return lp

    monkeypatch.setattr(run.model, "decode", overflowing_decode)
    monkeypatch.setattr(run.model, "log_prob", overflowing_log_prob)
    result = evaluate(run, n=4, alphas=[0.5], classical=False, invert_options=dict(steps=2))
    monkeypatch.undo()
    rows = {r["method"]: r for r in result["rows"]}
    assert {m: r["nonfinite"] for m, r in rows.items()} == {
        "flow": 1,
        "flow + keep observed": 1,
        "grey fill": 0,
        "mean-colour fill": 0,
        "harmonic fill": 0,
        "invert": 1,
    }
    assert all(r["images"] == 4 for r in rows.values())
    _, masked, clean, mask = heldout
    masked, clean, mask = masked[:4], clean[:4], mask[:4]
    finite = [0, 2, 3]
    flow = _flow_by_hand(run.model, masked, 0.5)
    assert torch.isnan(result["examples"][("flow", 0.5)][1]).all()
    assert rows["flow"]["rmse_in"] == pytest.approx(
        _pooled_rmse(flow[finite], _quantised(clean)[finite], mask[finite]), rel=1e-5
    )
    assert rows["grey fill"]["rmse_in"] == pytest.approx(
        _pooled_rmse(_quantised(masked), _quantised(clean), mask), rel=1e-5
    )
    bpd = _bits_per_dim_by_hand(run.model, masked, clean)
    b = result["bpd"]
    assert b["nonfinite"] == 1 and b["images"] == 4
    assert b["masked"] == pytest.approx(bpd[0][[0, 1, 3]].mean().item(), rel=1e-6)
    assert b["clean"] == pytest.approx(bpd[1][[0, 1, 3]].mean().item(), rel=1e-6)


def test_the_csv_holds_the_rows(evaluated, tmp_path):
    import csv

    from missingglow.analysis.evaluate import report_csv

    report_csv(tmp_path / "e.csv", evaluated)
    with open(tmp_path / "e.csv") as f:
        table = list(csv.DictReader(f))
    rows = evaluated["rows"]
    assert len(table) == len(rows) + 3
    for line, r in zip(table[:-3], rows, strict=True):
        assert line["method"] == r["method"]
        assert line["alpha"] == ("" if r["alpha"] is None else str(r["alpha"]))
        for key in ("rmse_in", "rmse_out", "seconds_per_image"):
            assert float(line[key]) == pytest.approx(r[key], abs=5e-7), (r["method"], key)
        for key in ("psnr_in", "psnr_out"):
            assert float(line[key]) == pytest.approx(r[key], abs=5e-5), (r["method"], key)
        assert int(line["nonfinite"]) == r["nonfinite"] and int(line["images"]) == 8
    b = evaluated["bpd"]
    assert [line["method"] for line in table[-3:]] == [
        "bits/dim masked",
        "bits/dim clean",
        "bits/dim gap (masked - clean)",
    ]
    for line, key in zip(table[-3:], ("masked", "clean", "gap"), strict=True):
        assert float(line["rmse_in"]) == pytest.approx(b[key], abs=5e-7)
        assert int(line["images"]) == 8


def test_the_report_files_are_written_and_named(evaluated, tmp_path):
    import json

    from missingglow.analysis.evaluate import report_json, write_report

    paths = write_report(evaluated, str(tmp_path / "ev"), str(tmp_path / "e.json"))
    assert [os.path.relpath(p, tmp_path) for p in paths] == [
        os.path.join("ev", "evaluation.csv"),
        os.path.join("ev", "evaluation.png"),
        os.path.join("ev", "comparison.png"),
        "e.json",
    ]
    report_json(str(tmp_path / "direct.json"), evaluated)  # the JSON is report_json's, as it was
    assert (tmp_path / "e.json").read_text() == (tmp_path / "direct.json").read_text()
    assert len(json.loads((tmp_path / "e.json").read_text())["rows"]) == len(evaluated["rows"])
    assert len(write_report(evaluated, str(tmp_path / "no-json"))) == 3


def test_latent_norms(run, tmp_path):
    from missingglow.analysis.latent_norms import (
        format_table,
        latent_norms,
        norms_plot,
        variants,
        write_latent_norms,
    )

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
    paths = write_latent_norms(result, str(tmp_path / "ln"))
    assert [os.path.basename(p) for p in paths] == ["latent-norms.csv", "latent-norms.png"]
    with open(paths[0]) as f:
        assert len(f.read().splitlines()) == 1 + len(norms)


def test_a_run_trained_without_squares_is_scored_on_the_squares_asked_for(run, tmp_path):
    """The clean upper bound of a comparison: --square K gives its held-out images the squares a
    run with its seed and that K would have; a run with squares of its own keeps them."""
    from missingglow.analysis.runs import Run
    from missingglow.data.masks import square_positions
    from missingglow.errors import UserError

    clean = Run(run.model, dict(run.config, square=0), run.path, run.image_size, run.n_bits)
    clean.with_dataset(None, 3)
    assert clean.square == 3 and clean.config["square"] == 3
    assert torch.equal(
        square_positions(clean.config["seed"], 0, 3, clean.config["squares"], run.image_size),
        square_positions(run.config.get("seed", 0), 0, 3, 1, run.image_size),
    )
    with pytest.raises(UserError, match="does not fit"):
        Run(run.model, dict(run.config, square=0), run.path, run.image_size, 5).with_dataset(
            None, run.image_size + 1
        )
    with pytest.raises(UserError, match="leave both out"):
        Run(run.model, dict(run.config), run.path, run.image_size, 5).with_dataset(None, 3)


def test_a_run_trained_without_squares_opens(run, tmp_path):
    """Table 1 and evaluate --square K read a clean-trained run: its square of 0 is no error."""
    payload = torch.load(
        run.path if run.path.endswith(".pt") else _latest(run.path), weights_only=True
    )
    payload["config"] = dict(payload["config"], square=0)
    path = str(tmp_path / "clean.pt")
    torch.save(payload, path)
    clean = open_run(path)
    assert clean.square is None and clean.config["square"] == 0
    assert open_run(path, square=3).square == 3


def _latest(run_dir):
    from missingglow.training import checkpoint as ckpt

    return ckpt.resolve(run_dir)
