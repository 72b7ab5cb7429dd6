"""The Python API (missingglow.load and Flow), docs/api.md's examples, and the exact way between
images and model space that the API's round trips rest on."""

import doctest
import math
import os
import subprocess
import sys

import pytest
import torch
from test_rosinality import rosinality_state

import missingglow as mg
from missingglow import UserError
from missingglow.flow.preprocess import bin_representatives, from_model, quantize, to_model
from missingglow.flow.rosinality import from_rosinality

from helpers import CONFIG, randomize, tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BITS = range(1, 9)
FLOATS = (torch.float32, torch.float64)


def row(values):
    """Values as a (1, 3, 1, L) batch of images, the channels holding them in different orders."""
    n = values.shape[0]
    return torch.stack([values, values.flip(0), values.roll(n // 2)]).view(1, 3, 1, n)


def centres(n_bits, dtype):
    return (torch.arange(2**n_bits, dtype=dtype) + 0.5) / 2**n_bits - 0.5


# --- the round trip -------------------------------------------------------------------------------


def test_bin_representatives_are_the_centres_rounded_up():
    for b in BITS:
        w, reps = 2 ** (8 - b), bin_representatives(b)
        assert torch.equal(reps // w, torch.arange(2**b))  # each in its own bin
        mean = torch.arange(2**b) * w + (w - 1) / 2  # the bin's mean value
        assert torch.equal(reps - mean, torch.full_like(mean, 0.5 if w > 1 else 0.0))
    assert bin_representatives(5)[16] == 132 and bin_representatives(1).tolist() == [64, 192]
    assert torch.equal(bin_representatives(8), torch.arange(256))


@pytest.mark.parametrize("dtype", FLOATS)
def test_quantised_images_come_back_exactly(dtype):
    """(a) from_model(to_model(x)) == x for images holding bin representatives, at every n_bits."""
    for b in BITS:
        images = row(bin_representatives(b).to(dtype) / 255)
        assert torch.equal(from_model(to_model(images, b), b), images), b
        assert torch.equal(to_model(images, b), row(centres(b, dtype))), b


@pytest.mark.parametrize("dtype", FLOATS)
def test_the_grid_of_bin_centres_comes_back_exactly(dtype):
    """(b) to_model(from_model(z)) == z for z on the grid, and the image between is 8-bit."""
    for b in BITS:
        z = row(centres(b, dtype))
        images = from_model(z, b)
        assert torch.equal(to_model(images, b), z), b
        assert torch.equal(images, row(bin_representatives(b).to(dtype) / 255)), b


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_error_in_model_space_does_not_change_the_bin(dtype):
    """A flow's round trip returns a centre up to float error; 0.4 of an 8-bit level either way
    still comes back to the same centre (a representative on a rounding tie would not)."""
    for b in BITS:
        z = row(centres(b, dtype))
        for shift in (-0.4 / 256, 0.4 / 256):
            assert torch.equal(to_model(from_model(z + shift, b), b), z), (b, shift)


@pytest.mark.parametrize("dtype", FLOATS)
def test_every_8_bit_value_quantises_to_its_bin(dtype):
    """(c) quantize(k/255) is bin floor(k / 2^(8−b)) however k/255 was computed: in float64,
    k·(1/255)·255 lands a hair below k for 24 of the 256 values, and flooring without rounding
    dropped those on a bin's lower edge by one bin."""
    k = torch.arange(256)
    made = {
        "k/255": k.to(dtype) / 255,
        "k·(1/255)": k.to(dtype) * (1 / 255),
        "float64 k/255 cast": (k.double() / 255).to(dtype),
        "uint8 divided in place": torch.empty(256, dtype=dtype).copy_(k).div_(255),
    }
    for name, images in made.items():
        for b in BITS:
            bins = (quantize(images, b) + 0.5) * 2**b
            assert torch.equal(bins, (k // 2 ** (8 - b)).to(dtype)), (name, b)
    assert torch.equal(quantize(torch.full((1, 3, 2, 2), 128 / 255), 5), torch.zeros(1, 3, 2, 2))


def test_other_images_are_quantised_as_their_8_bit_values(gen):
    images = torch.rand(2, 3, 8, 8, generator=gen)
    as_png = torch.round(images * 255) / 255
    for b in BITS:
        assert torch.equal(quantize(images, b), quantize(as_png, b))


# --- load -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("cache"))


def test_load_a_run_folder_and_its_checkpoint_file(run_dir, gen):
    from missingglow.training.checkpoint import resolve

    images = torch.rand(2, 3, 16, 16, generator=gen)
    folder, file = mg.load(run_dir), mg.load(resolve(str(run_dir)))
    for flow in (folder, file):
        assert isinstance(flow, mg.Flow) and isinstance(flow.model, mg.Glow)
        assert (flow.n_bits, flow.image_size, flow.channels, flow.square) == (5, 16, 3, 4)
        assert flow.config == CONFIG and not flow.model.training
    assert torch.equal(folder.encode(images), file.encode(images))


def test_load_a_rosinality_state_dict(tmp_path, gen):
    state = rosinality_state(gen)
    path = tmp_path / "model_000001.pt"
    torch.save(state, path)
    flow = mg.load(path)
    assert (flow.n_bits, flow.image_size, flow.channels) == (5, 64, 3)
    assert flow.config == {} and flow.square is None
    flow = mg.load(str(path), image_size=16)
    assert flow.image_size == 16 and flow.sample(2, seed=0).shape == (2, 3, 16, 16)
    images = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    expected = from_rosinality(state, image_size=16).encode(to_model(images, 5))
    assert torch.equal(flow.encode(images), expected)
    with pytest.raises(UserError):
        mg.load(path, image_size=20)  # 3 blocks halve the side 3 times


def test_foreign_files_are_user_errors(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "empty").mkdir()
    for path in ("other.pt", "notes.txt", "empty", "missing.pt"):
        with pytest.raises(UserError):
            mg.load(tmp_path / path)


def test_import_is_light_and_keeps_its_exports():
    code = (
        "import sys, missingglow as mg; "
        "print(sorted(n for n in ('Flow', 'Glow', 'UserError', 'bits_per_dim', 'dequantize', "
        "'from_rosinality', 'load', 'quantize', 'to_unit_range') if hasattr(mg, n))); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PIL', 'click') "
        "or m.startswith(('missingglow.analysis', 'missingglow.training'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert out.returncode == 0, out.stderr
    exports, heavy = out.stdout.splitlines()
    assert exports == str(sorted(mg.__all__)) and heavy == "[]"


# --- the Flow -------------------------------------------------------------------------------------


@pytest.fixture
def flow(gen):
    """A random, non-degenerate 16×16 flow (every part of it acts on its input)."""
    return mg.Flow(randomize(mg.Glow(blocks=2, flows=2, hidden=8, image_size=16), gen), n_bits=5)


def quantised(gen, n=3, channels=3, n_bits=5):
    reps = bin_representatives(n_bits)
    index = torch.randint(0, 2**n_bits, (n, channels, 16, 16), generator=gen)
    return reps[index].float() / 255


def test_encode_and_decode_are_inverse_on_quantised_images(flow, gen):
    images = quantised(gen)
    latent = flow.encode(images)
    assert latent.shape == (3, 768)
    back = flow.decode(latent)
    assert (back - images).abs().max() < 1e-4
    assert torch.equal(flow.to_model(back), flow.to_model(images))
    assert torch.equal(flow.from_model(flow.to_model(images)), images)


def test_bits_per_dim_by_hand():
    """A fresh additive Glow with its ActNorms marked initialised is an orthogonal map onto N(0, I)
    (zero couplings, orthogonal 1×1 convs, zero priors), so
    log p(x) = −‖x‖²/2 − D·log(2π)/2 and bits/dim = b + (‖x‖²/(2D) + log(2π)/2) / ln 2, x being
    the image's bin plus noise below 1/2^b."""
    torch.manual_seed(0)
    glow = mg.Glow(blocks=2, flows=2, hidden=8, affine=False, image_size=16)
    for name, buf in glow.named_buffers():
        if name.endswith("initialized"):
            buf.fill_(1)
    flow = mg.Flow(glow, n_bits=5)
    floor = 5 + math.log2(2 * math.pi) / 2
    grey = flow.bits_per_dim(torch.full((2, 3, 16, 16), 128 / 255))  # x in [0, 1/32)
    assert ((grey >= floor - 1e-4) & (grey <= floor + 1 / 1024 / 2 / math.log(2) + 1e-4)).all()
    white = flow.bits_per_dim(torch.ones(2, 1, 16, 16))  # x in [15/32, 1/2)
    low, high = (floor + (15 / 32) ** 2 / 2 / math.log(2), floor + 0.25 / 2 / math.log(2))
    assert ((white >= low - 1e-4) & (white <= high + 1e-4)).all()
    assert not torch.equal(white, flow.bits_per_dim(torch.ones(2, 1, 16, 16), seed=1))
    assert torch.equal(white, flow.bits_per_dim(torch.ones(2, 1, 16, 16), seed=0))


def test_samples_are_the_command_lines(run_dir):
    from missingglow.analysis.runs import open_run, sample_images

    flow = mg.load(run_dir)
    a = flow.sample(3, temperature=0.7, seed=1)
    assert torch.equal(a, sample_images(open_run(str(run_dir)), 3, 0.7, seed=1))
    assert a.shape == (3, 3, 16, 16) and not torch.equal(a, flow.sample(3, 0.7, seed=2))


def test_impute_keeps_observed_pixels_and_alpha_one_is_the_input(flow, gen):
    images = quantised(gen)
    hole = torch.zeros(16, 16, dtype=torch.bool)
    hole[2:9, 3:7] = True
    filled = flow.impute(images, alpha=0.3, mask=hole)
    assert torch.equal(filled[..., ~hole], images[..., ~hole])
    assert not torch.allclose(filled[..., hole], images[..., hole], atol=1e-2)
    assert (flow.impute(images, alpha=1.0) - images).abs().max() < 1e-4


def test_invert_keeps_observed_pixels_and_is_seeded(flow, gen):
    images = quantised(gen, n=2)
    hole = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    hole[0, 0, 4:8, 4:8] = hole[1, 0, 8:12, 2:6] = True
    one = flow.invert(images, hole, steps=3)
    assert one.shape == (2, 3, 16, 16)
    assert torch.equal(one[~hole.expand_as(one)], images[~hole.expand_as(images)])
    many = flow.invert(images, hole, samples=3, seed=4, steps=3)
    assert many.shape == (3, 2, 3, 16, 16) and torch.allclose(many[0], one, atol=1e-6)
    assert torch.equal(many, flow.invert(images, hole, samples=3, seed=4, steps=3))
    assert not torch.allclose(many[1], many[2])


def test_posterior_draws_keep_observed_pixels_differ_in_the_hole_and_are_seeded(flow, gen):
    images = quantised(gen, n=2)
    hole = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    hole[0, 0, 4:8, 4:8] = hole[1, 0, 8:12, 2:6] = True
    draws = flow.posterior(images, hole, 3, seed=1, warmup=3, steps=4, map_steps=3)
    assert draws.shape == (3, 2, 3, 16, 16)
    inside = hole.expand_as(images)
    for draw in draws:
        assert torch.equal(draw[~inside], images[~inside])
    assert not torch.allclose(draws[0][inside], draws[1][inside])  # draws, not one completion
    assert torch.equal(
        draws, flow.posterior(images, hole, 3, seed=1, warmup=3, steps=4, map_steps=3)
    )
    assert not torch.equal(
        draws, flow.posterior(images, hole, 3, seed=2, warmup=3, steps=4, map_steps=3)
    )
    # the chains start at invert's completion: with no steps the draws are that completion
    start = flow.posterior(images, hole, 2, warmup=0, steps=0, map_steps=3, gamma=0.02)
    restored = flow.invert(images, hole, steps=3, gamma=0.02)
    for draw in start:
        torch.testing.assert_close(draw, restored, rtol=0, atol=1e-6)


def test_bad_posterior_input_is_a_user_error(flow):
    good = torch.full((2, 3, 16, 16), 0.5)
    hole = torch.zeros(16, 16, dtype=torch.bool)
    hole[2:5, 2:5] = True
    for call, words in (
        (lambda: flow.posterior(good, hole, 0), "n must be at least 1"),
        (
            lambda: flow.posterior(good, hole, 2, steps=1, warmup=1, map_steps=1, step=3),
            "posterior has no option step",
        ),
        (
            lambda: flow.posterior(good, hole, 2, steps=1, warmup=1, map_steps=1, gamma=0),
            "gamma must be positive",
        ),
        (
            lambda: flow.posterior(good, hole, 2, temperature=-1, map_steps=1),
            "temperature must be positive",
        ),
    ):
        with pytest.raises(UserError) as caught:
            call()
        assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_one_channel_model_takes_rgb_and_gives_grey(gen):
    glow = randomize(mg.Glow(blocks=2, flows=2, hidden=8, in_channels=1, image_size=16), gen)
    flow = mg.Flow(glow, n_bits=5)
    rgb = quantised(gen)
    assert flow.encode(rgb).shape == (3, 256)
    assert flow.decode(flow.encode(rgb)).shape == (3, 1, 16, 16)
    assert flow.sample(2, seed=0).shape == (2, 1, 16, 16)
    assert flow.invert(rgb, torch.zeros(16, 16, dtype=torch.bool), steps=1).shape == (3, 1, 16, 16)


def test_bad_input_is_a_user_error(flow):
    good = torch.full((2, 3, 16, 16), 0.5)
    hole = torch.zeros(16, 16, dtype=torch.bool)
    calls = [
        lambda: flow.encode((good * 255).to(torch.uint8)),  # 8-bit images
        lambda: flow.encode(good * 2 - 1.5),  # [−1, 1]-style
        lambda: flow.encode(good[0]),  # no batch dimension
        lambda: flow.encode(torch.full((2, 4, 16, 16), 0.5)),  # 4 channels
        lambda: flow.encode(torch.full((2, 3, 16, 8), 0.5)),  # not square
        lambda: flow.encode(torch.full((2, 3, 18, 18), 0.5)),  # side not divisible by 4
        lambda: flow.encode([[0.5]]),  # not a tensor
        lambda: flow.decode(torch.zeros(2, 100)),  # no image has 100 values
        lambda: flow.sample(0),
        lambda: flow.impute(good, mask=torch.zeros(8, 8, dtype=torch.bool)),
        lambda: flow.invert(good, torch.zeros(3, 1, 16, 16, dtype=torch.bool)),
        lambda: flow.invert(good, hole, step=3),
        lambda: flow.invert(good, hole, start="nowhere", steps=1),
        lambda: flow.invert(good, hole, samples=0),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(UserError) as caught:
            call()
        assert "\n" not in str(caught.value), i


def test_the_documented_examples_run():
    """docs/api.md's `>>>` examples, run as they are written."""
    results = doctest.testfile(
        os.path.join(ROOT, "docs", "api.md"), module_relative=False, report=True
    )
    assert results.attempted > 0 and results.failed == 0
