"""Restoring images: latent-norm inversion, users' masks (files and alpha channels), evaluation of
every method side by side, and the newest run as the default checkpoint."""
import json
import os
import sys

import pytest
import torch
from PIL import Image

from missingglow.analysis import baselines
from missingglow.analysis.invert import harmonic_fill, invert, objective
from missingglow.data.images import alpha_mask, load_mask
from missingglow.errors import UserError
from missingglow.flow.model import Glow

from helpers import env_with_cache, randomize, run_in_process, tiny_run


def tiny_model(gen):
    model = Glow(blocks=2, flows=2, hidden=8, image_size=8, impl="fused").double()
    return randomize(model, gen).eval()


def holes(b, size, gen):
    missing = torch.zeros(b, 1, size, size, dtype=torch.bool)
    for i in range(b):
        top, left = torch.randint(0, size - 3, (2,), generator=gen).tolist()
        missing[i, :, top:top + 3, left:left + 3] = True
    missing[0, :, 0, :2] = True  # a second, irregular hole
    return missing


def test_inversion_keeps_observed_pixels_exactly_and_lowers_its_objective(gen):
    model = tiny_model(gen)
    x = torch.rand(3, 3, 8, 8, generator=gen, dtype=torch.float64) - 0.5
    missing = holes(3, 8, gen)
    out, history = invert(model, x, missing, steps=30, gamma=0.01, lr=0.02)
    assert out.shape == (1, 3, 3, 8, 8)
    observed = ~missing.expand_as(x)
    assert torch.equal(out[0][observed], x[observed])       # bit for bit
    assert not torch.equal(out[0][~observed], x[~observed])  # and the hole did change
    assert (history[-1] < history[0]).all(), history[[0, -1]]
    # history[0] is the objective at the start α·Φ(filled input)
    with torch.no_grad():
        z0 = 0.6 * model.encode(harmonic_fill(x, missing))
        start = objective(model, z0, x, (~missing).double(), 0.01)
    torch.testing.assert_close(history[0], start)


def test_several_samples_differ_only_inside_the_hole(gen):
    model = tiny_model(gen)
    x = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64) - 0.5
    missing = holes(2, 8, gen)
    out, _ = invert(model, x, missing, steps=5, samples=3, generator=gen)
    assert out.shape == (3, 2, 3, 8, 8)
    first, _ = invert(model, x, missing, steps=5)
    torch.testing.assert_close(out[0], first[0])  # the first completion is the deterministic one
    inside = missing.expand_as(x)
    assert torch.equal(out[1][~inside], out[2][~inside])
    assert (out[1][inside] - out[2][inside]).abs().max() > 0


def test_harmonic_fill_solves_laplace_inside_and_keeps_the_rest():
    # a linear ramp is harmonic: the fill must reproduce it inside any hole
    ramp = torch.linspace(0, 1, 12).repeat(3, 12, 1)[None]            # (1, 3, 12, 12)
    missing = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    missing[..., 3:8, 4:9] = True
    filled = harmonic_fill(torch.where(missing, torch.tensor(0.5), ramp), missing, 2000)
    torch.testing.assert_close(filled, ramp, atol=1e-4, rtol=0)


def test_a_mask_file_lands_on_the_right_pixels_after_resize_and_crop(tmp_path):
    # a 40×20 image becomes 16×16 by resizing to 32×16 and cropping columns 8..24
    mask = Image.new("L", (40, 20), 0)
    mask.paste(255, (20, 0, 30, 10))       # columns 20–29, rows 0–9 of the original
    mask.save(tmp_path / "mask.png")
    hole = load_mask(str(tmp_path / "mask.png"), (40, 20), 16)
    expected = torch.zeros(1, 16, 16, dtype=torch.bool)
    # original column c maps to resized 0.8·c, minus the crop's 8; rows scale by 0.8 too
    expected[:, 0:8, 8:16] = True
    assert torch.equal(hole, expected), hole.int()


def test_the_alpha_channel_is_the_hole(tmp_path):
    img = Image.new("RGBA", (16, 16), (200, 100, 50, 255))
    img.paste((0, 0, 0, 0), (2, 5, 7, 9))  # transparent: columns 2–6, rows 5–8
    hole = alpha_mask(img, 16, "x.png")
    expected = torch.zeros(1, 16, 16, dtype=torch.bool)
    expected[:, 5:9, 2:7] = True
    assert torch.equal(hole, expected)
    assert alpha_mask(img.convert("RGB"), 16, "x.png") is None


@pytest.mark.parametrize("case", ["wrong size", "all missing", "none missing", "unreadable",
                                  "absent"])
def test_bad_masks_are_user_errors(tmp_path, case):
    path = tmp_path / "m.png"
    if case == "wrong size":
        Image.new("L", (10, 10), 255).save(path)
    elif case == "all missing":
        Image.new("L", (20, 20), 255).save(path)
    elif case == "none missing":
        Image.new("L", (20, 20), 0).save(path)
    elif case == "unreadable":
        path.write_bytes(b"not an image")
    message = {"wrong size": "10×10 but its image is 20×20", "all missing": "every pixel",
               "none missing": "no pixel", "unreadable": "cannot read mask",
               "absent": "not found"}[case]
    with pytest.raises(UserError, match=message):
        load_mask(str(path), (20, 20), 16)


def test_classical_baselines_match_their_libraries_or_are_skipped():
    ok, missing = baselines.available()
    assert set(ok) | set(missing) == set(baselines.CLASSICAL)
    images = torch.rand(2, 3, 12, 12)
    hole = torch.zeros(2, 1, 12, 12, dtype=torch.bool)
    hole[..., 4:8, 4:8] = True
    for name in ok:
        out = baselines.inpaint(name, images, hole)
        assert out.shape == images.shape
        assert torch.allclose(out[~hole.expand_as(images)], images[~hole.expand_as(images)],
                              atol=1 / 255 + 1e-6)  # OpenCV works in 8 bits


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("imputation")
    cache = base / "cache"
    tiny_run(str(base / "runs" / "tiny"), str(cache))
    photo = base / "photo.png"
    Image.new("RGB", (24, 24), (180, 120, 90)).save(photo)
    mask = base / "mask.png"
    m = Image.new("L", (24, 24), 0)
    m.paste(255, (3, 3, 9, 12))
    m.save(mask)
    rgba = base / "hole.png"
    img = Image.new("RGBA", (16, 16), (90, 160, 200, 255))
    img.paste((0, 0, 0, 0), (8, 8, 12, 12))
    img.save(rgba)
    return {"base": base, "env": env_with_cache(cache), "photo": str(photo), "mask": str(mask),
            "rgba": str(rgba)}


def run_cli(setup, *args, cwd=None):
    """The command line, in this process."""
    proc = run_in_process(args, cwd=cwd or setup["base"],
                          env={"MISSINGGLOW_CACHE": setup["env"]["MISSINGGLOW_CACHE"]})
    return proc.returncode, proc.stdout, proc.stderr


def test_impute_invert_with_a_mask_file_an_alpha_channel_and_samples(setup):
    out_dir = setup["base"] / "restored"
    code, out, err = run_cli(setup, "impute", setup["photo"], "heldout:0", "--mask",
                             setup["mask"], "--steps", "5", "--samples", "3", "--out",
                             str(out_dir))
    assert code == 0, err
    assert "using the newest run" in err and os.path.join("runs", "tiny") in err
    assert "from mask mask.png" in out and "heldout-0: 16 missing pixels from the dataset" in out
    names = set(os.listdir(out_dir))
    assert {"photo-restored.png", "photo-sample-2.png", "heldout-0-restored.png",
            "invert.png"} <= names
    # observed pixels of the flat photo come back as they went in (its colour, 5-bit quantised)
    restored = torch.tensor(list(Image.open(out_dir / "photo-restored.png").convert("RGB")
                                 .tobytes())).view(-1, 3)
    hole = load_mask(setup["mask"], (24, 24), 16).flatten()
    expected = (torch.tensor([180, 120, 90]) // 8) / 32 * 255   # each value's 5-bit bin
    assert (restored[~hole] - expected).abs().max() <= 1


def test_impute_reads_the_alpha_channel_when_no_mask_is_given(setup):
    code, out, err = run_cli(setup, "impute", setup["rgba"], "--steps", "3", "--out",
                             str(setup["base"] / "alpha"))
    assert code == 0, err
    assert "16 missing pixels from its alpha channel" in out


def test_evaluate_json_holds_every_method(setup):
    path = setup["base"] / "ev.json"
    code, out, err = run_cli(setup, "evaluate", "-n", "4", "--alpha", "0.5", "--iterations", "2",
                             "--steps", "3", "--json", str(path), "--out",
                             str(setup["base"] / "ev"))
    assert code == 0, err
    rows = json.loads(path.read_text())["rows"]
    methods = {r["method"] for r in rows}
    ok, missing = baselines.available()
    assert {"grey fill", "mean-colour fill", "harmonic fill", "flow", "flow + keep observed",
            "flow + keep observed ×2", "invert", *ok} == methods
    for r in rows:
        assert set(r) == {"method", "alpha", "rmse_in", "psnr_in", "rmse_out", "psnr_out",
                          "nonfinite", "images", "seconds_per_image"}
    invert_row = next(r for r in rows if r["method"] == "invert")
    assert invert_row["rmse_out"] == 0 and invert_row["images"] == 4
    assert (setup["base"] / "ev" / "comparison.png").is_file()


def test_a_missing_baseline_is_reported_not_silent(setup, tmp_path, monkeypatch):
    for name in ("skimage", "cv2"):             # unimportable for this test, as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    code, out, err = run_cli(setup, "evaluate", "-n", "2", "--alpha", "0.5", "--iterations", "1",
                             "--steps", "2", "--out", str(tmp_path / "ev"))
    assert code == 0, err
    assert "skipped biharmonic (scikit-image): not installed (pip install scikit-image" in err
    assert "skipped Telea (OpenCV)" in err and "skipped Navier–Stokes (OpenCV)" in err


BAD = {
    "mask of the wrong size": (["impute", "{photo}", "--mask", "{rgba}"], "but its image is"),
    "too many masks": (["impute", "{photo}", "--mask", "{mask}", "--mask", "{mask}", "--mask",
                        "{mask}"], "--mask files for 1 image"),
    "invert with several alphas": (["impute", "{photo}", "--alpha", "0.2,0.4"], "one --alpha"),
    "negative gamma": (["impute", "{photo}", "--gamma", "-1"], "--gamma"),
    "zero steps": (["evaluate", "--steps", "0"], "--steps"),
    "samples with alpha": (["impute", "{photo}", "--method", "alpha", "--samples", "2"],
                           "--samples"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_imputation_input_is_one_clear_line(setup, case):
    args, message = BAD[case]
    code, out, err = run_cli(setup, *[a.format(**setup) for a in args])
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_no_run_and_no_checkpoint_is_one_clear_line(setup, tmp_path):
    code, out, err = run_cli(setup, "sample", cwd=tmp_path)
    assert code == 2 and "no trained run under ./runs/" in err and "Traceback" not in err
