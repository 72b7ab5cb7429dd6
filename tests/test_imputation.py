"""Restoring images: latent-norm inversion, users' masks (files and alpha channels), evaluation of
every method side by side, and the newest run as the default checkpoint."""

import json
import math
import os
import re
import sys

import pytest
import torch
from PIL import Image

from missingglow.analysis import baselines
from missingglow.completion.invert import harmonic_fill, invert, objective
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
        missing[i, :, top : top + 3, left : left + 3] = True
    missing[0, :, 0, :2] = True  # a second, irregular hole
    return missing


def test_inversion_keeps_observed_pixels_exactly_and_lowers_its_objective(gen):
    model = tiny_model(gen)
    x = torch.rand(3, 3, 8, 8, generator=gen, dtype=torch.float64) - 0.5
    missing = holes(3, 8, gen)
    out, history = invert(model, x, missing, steps=30, gamma=0.01, lr=0.02)
    assert out.shape == (1, 3, 3, 8, 8)
    observed = ~missing.expand_as(x)
    assert torch.equal(out[0][observed], x[observed])  # bit for bit
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
    ramp = torch.linspace(0, 1, 12).repeat(3, 12, 1)[None]  # (1, 3, 12, 12)
    missing = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    missing[..., 3:8, 4:9] = True
    filled = harmonic_fill(torch.where(missing, torch.tensor(0.5), ramp), missing, 2000)
    torch.testing.assert_close(filled, ramp, atol=1e-4, rtol=0)


def test_a_mask_file_lands_on_the_right_pixels_after_resize_and_crop(tmp_path):
    # a 40×20 image becomes 16×16 by resizing to 32×16 and cropping columns 8..24
    mask = Image.new("L", (40, 20), 0)
    mask.paste(255, (20, 0, 30, 10))  # columns 20–29, rows 0–9 of the original
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


@pytest.mark.parametrize(
    "case", ["wrong size", "all missing", "none missing", "unreadable", "absent"]
)
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
    message = {
        "wrong size": "10×10 but its image is 20×20",
        "all missing": "every pixel",
        "none missing": "no pixel",
        "unreadable": "cannot read mask",
        "absent": "not found",
    }[case]
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
        assert torch.allclose(
            out[~hole.expand_as(images)], images[~hole.expand_as(images)], atol=1 / 255 + 1e-6
        )  # OpenCV works in 8 bits


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
    # a logo saved with an alpha channel that is opaque everywhere, a grey square pasted in; and
    # the same picture without its alpha channel
    logo = Image.new("RGBA", (16, 16), (30, 90, 200, 255))
    for x in range(16):
        logo.putpixel((x, 14), (200, 40, 40, 255))
    logo.paste((128, 128, 128, 255), (5, 5, 9, 9))
    logo.save(base / "logo.png")
    logo.convert("RGB").save(base / "logo-rgb.png")
    (base / "broken.png").write_bytes(b"not a png at all")
    return {
        "base": base,
        "env": env_with_cache(cache),
        "photo": str(photo),
        "mask": str(mask),
        "rgba": str(rgba),
        "logo": str(base / "logo.png"),
        "logo_rgb": str(base / "logo-rgb.png"),
        "broken": str(base / "broken.png"),
        "run": str(base / "runs" / "tiny"),
    }


def run_cli(setup, *args, cwd=None):
    """The command line, in this process."""
    proc = run_in_process(
        args, cwd=cwd or setup["base"], env={"MISSINGGLOW_CACHE": setup["env"]["MISSINGGLOW_CACHE"]}
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_impute_invert_with_a_mask_file_an_alpha_channel_and_samples(setup):
    out_dir = setup["base"] / "restored"
    code, out, err = run_cli(
        setup,
        "impute",
        setup["photo"],
        "heldout:0",
        "--mask",
        setup["mask"],
        "--steps",
        "5",
        "--samples",
        "3",
        "--posterior-warmup",
        "3",
        "--posterior-steps",
        "3",
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    assert "using the newest run" in err and os.path.join("runs", "tiny") in err
    assert "from mask mask.png" in out and "heldout-0: 16 missing pixels from the dataset" in out
    assert out.count("3 posterior draws (acceptance ") == 2
    assert "wrote 8 restored image(s)" in out
    assert sorted(os.listdir(out_dir)) == sorted(
        [
            f"{name}-{what}.png"
            for name in ("photo", "heldout-0")
            for what in ("restored", "sample-1", "sample-2", "sample-3")
        ]
        + ["invert.png"]
    )
    # observed pixels of the flat photo come back as they went in (its colour, 5-bit quantised)
    restored = torch.tensor(
        list(Image.open(out_dir / "photo-restored.png").convert("RGB").tobytes())
    ).view(-1, 3)
    hole = load_mask(setup["mask"], (24, 24), 16).flatten()
    expected = torch.tensor([180, 120, 90]) // 8 * 8 + 4  # each value's 5-bit bin's centre
    assert (restored[~hole] - expected).abs().max() <= 1


def test_impute_samples_are_posterior_draws_beside_the_map_with_their_spread(
    setup, monkeypatch, tmp_path
):
    """restored.png is invert's completion, sample-K.png the K-th draw of a chain started there,
    and the spread in invert.png is taken over the draws alone."""
    from missingglow.analysis import impute
    from missingglow.analysis.runs import open_run
    from missingglow.flow.preprocess import from_model, to_model
    from missingglow.seeding import generator

    monkeypatch.setenv("MISSINGGLOW_CACHE", setup["env"]["MISSINGGLOW_CACHE"])
    run = open_run(setup["run"])
    plan = impute.plan_impute(samples=4)
    items, _ = impute.prepare_inputs(run, ["heldout:0", "heldout:3"], plan)
    spreads = []
    spread_map = impute.spread_map
    monkeypatch.setattr(impute, "spread_map", lambda c: spreads.append(c) or spread_map(c))
    sampling = dict(warmup=3, steps=4)
    done = impute.restore_inputs(
        run, items, plan, str(tmp_path), seed=5, invert_options=dict(steps=6), sampling=sampling
    )
    assert done.count == 2 * 5 and done.nonfinite == 0
    x = to_model(torch.stack([it.image for it in items]), run.n_bits, 3)
    hole = torch.stack([it.mask for it in items])
    best, draws, _, _ = impute.map_and_draws(
        run.model, x, hole, 4, generator(5, "posterior"), sampling=sampling, steps=6, alpha=0.6
    )
    best, draws = from_model(best, run.n_bits), from_model(draws.flatten(0, 1), run.n_bits)
    draws = draws.view(4, 2, 3, 16, 16)
    for b, item in enumerate(items):
        assert _png(tmp_path / f"{item.name}-restored.png") == _levels(best[b])
        for k in range(4):
            assert _png(tmp_path / f"{item.name}-sample-{k + 1}.png") == _levels(draws[k, b])
        torch.testing.assert_close(spreads[b], draws[:, b])  # the draws only, not the MAP
        inside = hole[b].expand(3, -1, -1)
        assert torch.equal(draws[:, b][:, ~inside], best[b][~inside].expand(4, -1))
        assert (draws[:, b].std(0)[inside] > 0).any()
    assert not os.path.exists(tmp_path / "heldout-0-sample-5.png")


def _levels(image):
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).flatten().tolist()


def _png(path):
    return list(Image.open(path).convert("RGB").tobytes())


def test_impute_reads_the_alpha_channel_when_no_mask_is_given(setup):
    code, out, err = run_cli(
        setup, "impute", setup["rgba"], "--steps", "3", "--out", str(setup["base"] / "alpha")
    )
    assert code == 0, err
    assert "16 missing pixels from its alpha channel" in out


def test_evaluate_json_holds_every_key_for_every_family_and_method(setup):
    from missingglow.analysis.evaluate import NEW_SCORES

    path = setup["base"] / "ev.json"
    code, out, err = run_cli(
        setup,
        "evaluate",
        "-n",
        "4",
        "--alpha",
        "0.5",
        "--iterations",
        "2",
        "--steps",
        "3",
        "--samples",
        "4",
        "--posterior-warmup",
        "2",
        "--posterior-steps",
        "2",
        "--json",
        str(path),
        "--out",
        str(setup["base"] / "ev"),
    )
    assert code == 0, err
    result = json.loads(path.read_text())
    ok, missing = baselines.available()
    expected = {
        "grey fill",
        "mean-colour fill",
        "harmonic fill",
        "flow",
        "flow + keep observed",
        "flow + keep observed ×2",
        "invert",
        "posterior (MALA)",
        *ok,
    }
    keys = {
        "method",
        "alpha",
        "rmse_in",
        "psnr_in",
        "rmse_out",
        "psnr_out",
        "nonfinite",
        "images",
        "seconds_per_image",
        "family",
        *NEW_SCORES,
        "samples",
    }
    assert result["masks"] == ["square", "centre", "rectangles", "pixels"]
    assert list(result["families"]) == result["masks"]
    assert result["rows"] == result["families"]["square"]["rows"]
    for family, part in result["families"].items():
        rows = part["rows"]
        assert {r["method"] for r in rows} == expected, family
        for r in rows:
            assert set(r) == keys and r["family"] == family and r["images"] == 4, r
            sampler = r["method"] == "posterior (MALA)"
            assert r["samples"] == (4 if sampler else 1)
            for key in ("coverage_50", "coverage_90"):
                assert (0 <= r[key] <= 1) if sampler else r[key] is None, (family, r)
            for key in ("rmse_hole", "psnr_hole", "ssim_hole", "psnr_whole", "crps", "best_rmse"):
                assert isinstance(r[key], float) and math.isfinite(r[key]), (family, key, r)
        methods = {r["method"]: r for r in rows}
        for method in ("invert", "posterior (MALA)"):
            assert methods[method]["rmse_out"] == 0, (family, method)  # observed pixels kept
        assert (
            setup["base"]
            / "ev"
            / ("comparison.png" if family == "square" else f"comparison-{family}.png")
        ).is_file()
    p = result["posterior"]
    assert (p["samples"], p["warmup"], p["steps"], p["gamma"]) == (4, 2, 2, 0.01)
    assert set(p["acceptance"]) == set(result["masks"])
    assert all(0 <= a <= 1 for a in p["acceptance"].values())
    assert "holes: pixels, 50.0 % of each image missing" in out


def test_a_missing_baseline_is_reported_not_silent(setup, tmp_path, monkeypatch):
    for name in ("skimage", "cv2"):  # unimportable for this test, as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    code, out, err = run_cli(
        setup,
        "evaluate",
        "-n",
        "2",
        "--alpha",
        "0.5",
        "--iterations",
        "1",
        "--steps",
        "2",
        "--masks",
        "square",
        "--samples",
        "0",
        "--out",
        str(tmp_path / "ev"),
    )
    assert code == 0, err
    assert "skipped biharmonic (scikit-image): not installed (pip install scikit-image" in err
    assert "skipped Telea (OpenCV)" in err and "skipped Navier–Stokes (OpenCV)" in err


BAD = {
    "mask of the wrong size": (["impute", "{photo}", "--mask", "{rgba}"], "but its image is"),
    "too many masks": (
        ["impute", "{photo}", "--mask", "{mask}", "--mask", "{mask}", "--mask", "{mask}"],
        "--mask files for 1 image",
    ),
    "invert with several alphas": (
        ["impute", "{photo}", "--method", "invert", "--alpha", "0.2,0.4"],
        "one --alpha",
    ),
    "negative gamma": (["impute", "{photo}", "--gamma", "-1"], "--gamma"),
    "zero steps": (["evaluate", "--steps", "0"], "--steps"),
    "samples with alpha": (
        ["impute", "{photo}", "--method", "alpha", "--samples", "2"],
        "--samples",
    ),
    "samples without noise": (
        ["impute", "{photo}", "--samples", "2", "--gamma", "0"],
        "--samples needs --gamma above 0",
    ),
    "zero temperature": (
        ["impute", "{photo}", "--samples", "2", "--temperature", "0"],
        "--temperature",
    ),
    "negative samples": (["evaluate", "--samples", "-1"], "--samples"),
    "unknown mask family": (
        ["evaluate", "--masks", "square,circles"],
        "--masks': takes mask families from square,centre,rectangles,pixels (unknown 'circles')",
    ),
    "a family twice": (["evaluate", "--masks", "centre,centre"], "each name once"),
    "no family": (["evaluate", "--masks", ""], "--masks"),
    "evaluate samples without noise": (["evaluate", "--gamma", "0"], "--gamma above 0"),
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


# ------------------------------------------------ --alpha alone, and one bad input among good ones


def pixels(path):
    with Image.open(path) as img:
        return img.convert("RGB").tobytes()


def test_alpha_alone_restores_every_input_an_opaque_alpha_channel_too(setup, tmp_path):
    code, out, err = run_cli(
        setup,
        "impute",
        "--alpha",
        "0.6",
        setup["photo"],
        setup["rgba"],
        setup["logo"],
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == [
        "hole-alpha0.60.png",
        "logo-alpha0.60.png",
        "photo-alpha0.60.png",
    ]
    assert "logo: 1 alpha(s), whole image" in out
    assert out.strip().splitlines()[-1] == f"wrote 3 restored image(s) to {tmp_path}"


def test_an_opaque_alpha_channel_leaves_the_hole_to_the_detector(setup, tmp_path):
    for name in ("logo", "logo_rgb"):
        code, out, err = run_cli(
            setup,
            "impute",
            "--alpha",
            "0.6",
            "--keep-observed",
            setup[name],
            "--out",
            str(tmp_path / name),
        )
        assert code == 0, err
        assert "square from the detector (1 square)" in out, out
    # the alpha channel changed nothing: the same pixels as the picture saved without it
    assert pixels(tmp_path / "logo" / "logo-alpha0.60.png") == pixels(
        tmp_path / "logo_rgb" / "logo-rgb-alpha0.60.png"
    )


def test_several_alphas_draw_the_strips(setup, tmp_path):
    code, out, err = run_cli(
        setup,
        "impute",
        "--alpha",
        "0.2,0.6,1.0",
        setup["photo"],
        "heldout:0",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    names = set(os.listdir(tmp_path))
    assert {"photo-strip.png", "heldout-0-strip.png", "overview.png"} <= names
    assert {f"photo-alpha{a:.2f}.png" for a in (0.2, 0.6, 1.0)} <= names
    assert "photo: 3 alpha(s), whole image" in out
    with Image.open(tmp_path / "heldout-0-strip.png") as strip:  # input, 3 alphas, original
        assert strip.size[1] > strip.size[0] and strip.size[1] >= 5 * 16


def test_without_alpha_the_default_is_inversion(setup, tmp_path):
    code, out, err = run_cli(
        setup,
        "impute",
        setup["photo"],
        "--mask",
        setup["mask"],
        "--steps",
        "2",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["invert.png", "photo-restored.png"]
    assert "missing pixels from mask mask.png, objective" in out


def error_lines(err):
    return [line for line in err.strip().splitlines() if line.startswith("error:")]


def test_one_unreadable_file_is_one_line_and_the_others_are_written(setup, tmp_path):
    code, out, err = run_cli(
        setup,
        "impute",
        "--alpha",
        "0.6",
        setup["photo"],
        setup["broken"],
        setup["logo"],
        "--out",
        str(tmp_path),
    )
    assert code == 2, err
    assert sorted(os.listdir(tmp_path)) == ["logo-alpha0.60.png", "photo-alpha0.60.png"]
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {setup['broken']}: cannot read"), err
    assert "pass a PNG, JPEG, BMP or WebP file" in lines[0]
    assert out.strip().splitlines()[-1] == f"wrote 2 restored image(s) to {tmp_path}"
    assert "Traceback" not in err


def test_inputs_without_a_hole_fail_alone_under_inversion(setup, tmp_path):
    """Inversion needs each input's hole: the flat photo has none to find, the held-out item its
    dataset's square, the transparent one its alpha channel."""
    code, out, err = run_cli(
        setup,
        "impute",
        "heldout:0",
        setup["photo"],
        setup["rgba"],
        "heldout:99",
        "--steps",
        "2",
        "--out",
        str(tmp_path),
    )
    assert code == 2, err
    assert {"heldout-0-restored.png", "hole-restored.png", "invert.png"} == set(
        os.listdir(tmp_path)
    )
    assert error_lines(err) == [
        f"error: {setup['photo']}: no grey square found; give its place by hand with --square "
        "TOP,LEFT,SIZE, or the hole with --mask FILE",
        "error: heldout:99: out of range: the held-out split has 16 images (heldout:0 to "
        "heldout:15)",
    ]


def test_a_bad_mask_for_one_file_sinks_only_that_file(setup, tmp_path):
    # the mask fits the 24×24 photo, not the 16×16 picture
    code, out, err = run_cli(
        setup,
        "impute",
        setup["photo"],
        setup["logo_rgb"],
        "--mask",
        setup["mask"],
        "--mask",
        setup["mask"],
        "--steps",
        "2",
        "--out",
        str(tmp_path),
    )
    assert code == 2, err
    assert "photo-restored.png" in os.listdir(tmp_path)
    assert "logo-rgb-restored.png" not in os.listdir(tmp_path)
    (line,) = error_lines(err)
    assert line.startswith(
        f"error: {setup['logo_rgb']}: mask {setup['mask']} is 24×24 but its image is 16×16"
    ), line


# ------------------------------------------------------------- the option rules, without click


def test_the_options_become_a_plan():
    from missingglow.analysis.impute import Plan, plan_impute

    assert plan_impute() == Plan("invert", (0.6,), True)
    assert plan_impute(alphas=[0.6]) == Plan("alpha", (0.6,), False)
    assert plan_impute(alphas=[0.2, 0.6, 1.0]).alphas == (0.2, 0.6, 1.0)
    assert plan_impute("invert", [0.3], samples=4) == Plan("invert", (0.3,), True, samples=4)
    assert plan_impute("alpha") == Plan("alpha", (0.6,), False)
    assert plan_impute("alpha", iterations=2) == Plan("alpha", (0.6,), True, iterations=2)
    assert plan_impute(alphas=[0.5], keep_observed=True, square=(1, 2, 4)) == Plan(
        "alpha", (0.5,), True, square=(1, 2, 4)
    )
    assert plan_impute(masks=["m.png"]).masks == ("m.png",)


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(method="invert", alphas=[0.2, 0.4]), "--method invert takes one --alpha"),
        (dict(alphas=[0.6], samples=2), "add --method invert"),
        (
            dict(method="alpha", samples=2),
            "--samples draws several completions with --method invert",
        ),
        (dict(method="alpha", square=(1, 1, 4)), "add --keep-observed"),
        (dict(alphas=[0.6], masks=["m.png"]), "--mask gives the hole for --keep-observed"),
        (dict(masks=["m.png"], square=(1, 1, 4)), "--mask or with --square, not both"),
        (dict(method="invert", keep_observed=True), "--keep-observed and --iterations are for"),
        (dict(iterations=3), "add --alpha A or --method alpha"),
    ],
)
def test_contradicting_options_are_refused(options, message):
    from missingglow.analysis.impute import plan_impute

    with pytest.raises(UserError, match=re.escape(message)):
        plan_impute(**options)


def test_prepare_inputs_keeps_the_usable_ones(setup, monkeypatch):
    from missingglow.analysis.impute import plan_impute, prepare_inputs
    from missingglow.analysis.runs import open_run

    monkeypatch.setenv("MISSINGGLOW_CACHE", setup["env"]["MISSINGGLOW_CACHE"])
    run = open_run(setup["run"])
    said = []
    specs = [
        setup["rgba"],
        setup["broken"],
        "heldout:0",
        "heldout:x",
        setup["photo"],
        setup["logo"],
    ]
    items, failures = prepare_inputs(run, specs, plan_impute(), say=said.append)
    assert [(i.name, i.source) for i in items] == [
        ("hole", "its alpha channel"),
        ("heldout-0", "the dataset"),
        ("logo", "the detector (1 square)"),
    ]
    assert [int(i.mask.sum()) for i in items] == [16, 16, 16]
    assert [spec for spec, _ in failures] == [setup["broken"], "heldout:x", setup["photo"]]
    assert failures[1][1] == "write heldout:N with N a whole number"
    assert said == [
        "2 input(s) converted to RGB, shorter side resized to 16 and centre-cropped "
        "to 16×16, as in training (hole.png, logo.png)"
    ]  # RGBA, of those used
    # the α method without keep-observed needs no hole: nothing is looked for, nothing fails
    items, failures = prepare_inputs(
        run, [setup["photo"], setup["logo"]], plan_impute(alphas=[0.6])
    )
    assert failures == [] and [i.mask for i in items] == [None, None]
    # a square by hand that fits no input is the options' fault, said once
    with pytest.raises(UserError, match="does not fit 16×16 images"):
        prepare_inputs(run, [setup["photo"]], plan_impute(square=(10, 10, 8)))


def test_restore_inputs_returns_what_it_wrote(setup, monkeypatch, tmp_path):
    from missingglow.analysis.impute import plan_impute, prepare_inputs, restore_inputs
    from missingglow.analysis.runs import open_run

    monkeypatch.setenv("MISSINGGLOW_CACHE", setup["env"]["MISSINGGLOW_CACHE"])
    run = open_run(setup["run"])
    plan = plan_impute(alphas=[0.3, 0.9])
    items, _ = prepare_inputs(run, [setup["photo"], "heldout:1"], plan)
    done = restore_inputs(run, items, plan, str(tmp_path / "a"))
    assert done.count == 4 and done.nonfinite == 0 and len(done.lines) == 2
    assert sorted(os.path.basename(p) for p in done.paths) == sorted(os.listdir(tmp_path / "a"))
    assert len(done.paths) == 4 + 2 + 1  # an image per alpha, a strip per input, the overview
    plan = plan_impute(samples=2)
    items, _ = prepare_inputs(run, ["heldout:1"], plan)
    done = restore_inputs(
        run,
        items,
        plan,
        str(tmp_path / "b"),
        invert_options=dict(steps=2),
        sampling=dict(warmup=1, steps=1),
    )
    assert done.count == 3
    assert sorted(os.path.basename(p) for p in done.paths) == [
        "heldout-1-restored.png",
        "heldout-1-sample-1.png",
        "heldout-1-sample-2.png",
        "invert.png",
    ]


def test_a_lone_missing_pixel_survives_a_large_shrink():
    """One missing source pixel under a model pixel of 47×47 source pixels (a 3000-px mask shrunk
    to 64): averaging filters round it away, the max over the pixel's box keeps it."""
    from PIL import Image

    from missingglow.data.images import _hole_from

    mask = Image.new("L", (3008, 3008), 0)
    mask.putpixel((1500, 700), 255)
    hole = _hole_from(mask, 64, "a mask")
    assert hole.sum() == 1 and hole[0, 700 * 64 // 3008, 1500 * 64 // 3008]


def test_transparent_colours_and_premultiplied_alpha_are_holes():
    """An RGB or grey PNG's transparent colour marks its pixels missing, as a palette's does; a
    premultiplied mode's alpha band ("a") is read like "A"."""
    from PIL import Image

    from missingglow.data.images import alpha_mask

    rgb = Image.new("RGB", (16, 16), (10, 20, 30))
    rgb.paste((1, 2, 3), (4, 4, 8, 8))
    rgb.info["transparency"] = (1, 2, 3)
    hole = alpha_mask(rgb, 16, "rgb.png")
    assert hole is not None and hole.sum() == 16 and hole[0, 4:8, 4:8].all()
    grey = Image.new("L", (16, 16), 200)
    grey.paste(7, (0, 0, 2, 16))
    grey.info["transparency"] = 7
    assert alpha_mask(grey, 16, "grey.png").sum() == 32
    rgba = Image.new("RGBA", (16, 16), (9, 9, 9, 255))
    rgba.paste((9, 9, 9, 0), (0, 0, 16, 3))
    assert alpha_mask(rgba.convert("RGBa"), 16, "pre.png").sum() == 48
