"""Tests that kill mutants of the restoring path (tests/mutation.sh targets restore, masks and
quantise): the latent-norm inversion, the grey squares, users' mask files and alpha channels, and
quantisation. Every value is worked out by hand or by a plain-Python twin, on a few pixels.

The inversion runs on a model whose Φ is a reshape (`Reshape`), so its objective, gradient and
each optimiser step can be written out by hand; the real Glow is tests/test_imputation.py's."""

import hashlib
import math

import pytest
import torch
from PIL import Image

from missingglow.completion.invert import harmonic_fill, invert, objective, observed_mean
from missingglow.data import masks
from missingglow.data.images import alpha_mask, from_pil, load_image, load_mask
from missingglow.errors import UserError
from missingglow.flow.preprocess import (
    bin_representatives,
    dequantize,
    from_model,
    luma,
    match_channels,
    quantize,
    to_model,
    to_unit_range,
)

# --- the inversion ----------------------------------------------------------------------------


class Reshape(torch.nn.Module):
    """Φ(x) = x flattened, Φ⁻¹(z) = z reshaped; both times a trainable and a frozen parameter
    (each 1), so the search's handling of parameters shows."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
        self.frozen = torch.nn.Parameter(torch.ones((), dtype=torch.float64), requires_grad=False)

    def encode(self, x):
        return x.flatten(1) * self.scale * self.frozen

    def decode(self, z):
        return (z * self.scale * self.frozen).view(-1, *self.shape)


def close(got, expected, tol=1e-12):
    """Equal shapes and values within tol (torch.testing's first call costs seconds of imports)."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    return got.shape == expected.shape and bool(((got - expected).abs() <= tol).all())


def pixels(rows):
    """A (B, 1, S, S) float64 tensor from nested lists of rows per image."""
    return torch.tensor(rows, dtype=torch.float64)[:, None]


def hole(b, size, *where):
    """(b, 1, size, size) bool, True at each (image, row, column) given."""
    out = torch.zeros(b, 1, size, size, dtype=torch.bool)
    for i, r, c in where:
        out[i, 0, r, c] = True
    return out


def test_observed_mean_by_hand():
    images = torch.tensor(
        [[[[1, 2], [3, 4]], [[10, 20], [30, 40]]], [[[5, 6], [7, 8]], [[-1, -2], [-3, -4]]]],
        dtype=torch.float64,
    )
    missing = hole(2, 2, (0, 0, 0), (1, 0, 1), (1, 1, 1))
    # image 0 without (0, 0): (2 + 3 + 4) / 3, (20 + 30 + 40) / 3; image 1 keeps column 0
    expected = torch.tensor([[3.0, 30.0], [6.0, -2.0]], dtype=torch.float64)[..., None, None]
    assert torch.equal(observed_mean(images, missing), expected)


def corner_fill(observed_mean, down, right, sweeps):
    """A hole of one pixel in a corner: its padded neighbours beyond the edge are itself, so a
    sweep is x ← (2x + down + right) / 4, which halves x's distance to p = (down + right) / 2."""
    p = (down + right) / 2
    return p + (observed_mean - p) / 2**sweeps


def test_harmonic_fill_of_a_corner_and_a_centre_by_hand():
    # image 0: the corner (0, 0) is missing; image 1: the centre (1, 1)
    ones = [[9, 2, 0], [6, 1, 1], [0, 1, 1]]
    images = torch.stack(
        [
            torch.tensor([ones, [[r * 2 for r in row] for row in ones]]),
            torch.tensor([[[1, 2, 3], [4, 9, 6], [7, 8, 0]]] * 2),
        ]
    ).double()
    images[1, 1] *= -1
    missing = hole(2, 3, (0, 0, 0), (1, 1, 1))
    for sweeps in (None, 1, 5):
        filled = harmonic_fill(images, missing, sweeps)
        assert torch.equal(filled[~missing.expand_as(images)], images[~missing.expand_as(images)])
        # 12 sweeps by default (4 × the side); the fill starts at the mean observed colour
        n = sweeps or 12
        assert filled[0, 0, 0, 0].item() == pytest.approx(corner_fill(12 / 8, 6, 2, n), abs=1e-14)
        assert filled[0, 1, 0, 0].item() == pytest.approx(corner_fill(24 / 8, 12, 4, n), abs=1e-14)
        # the centre's four neighbours are all observed: their mean after any sweep
        assert filled[1, 0, 1, 1].item() == pytest.approx((2 + 4 + 6 + 8) / 4, abs=1e-14)
        assert filled[1, 1, 1, 1].item() == pytest.approx(-(2 + 4 + 6 + 8) / 4, abs=1e-14)
    # no sweep at all: the start, each image's mean observed colour (not the default's sweeps)
    start = harmonic_fill(images, missing, 0)
    assert start[0, 0, 0, 0].item() == pytest.approx(12 / 8, abs=1e-14)
    assert start[1, 0, 1, 1].item() == pytest.approx((1 + 2 + 3 + 4 + 6 + 7 + 8 + 0) / 8)
    # the default's 12 sweeps are visible: 11 or 13 would move the corner by more than 1e-4
    assert abs(corner_fill(1.5, 6, 2, 12) - corner_fill(1.5, 6, 2, 13)) > 1e-4


def test_objective_by_hand():
    model = Reshape((1, 2, 2))
    x = pixels([[[0.5, -0.5], [1.0, 0.0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]])
    z = torch.tensor([[1.5, 0.5, -1.0, 2.0], [-3, 1, 1, 1], [2, 0, 0, 0]], dtype=torch.float64)
    observed = (
        ~hole(
            3,
            2,
            (0, 1, 1),
            (1, 0, 1),
            (1, 1, 0),
            (1, 1, 1),
            *[(2, r, c) for r in range(2) for c in range(2)],
        )
    ).double()
    # image 0: (z − x) = 1, 1, −2 on its 3 observed pixels → 6/3; ‖z‖²/D = 7.5/4; γ = 0.2
    # image 1: one observed pixel, (−3)² / 1; ‖z‖²/D = 12/4
    # image 2: nothing observed: no fit term (not 0/0); ‖z‖²/D = 4/4
    got = objective(model, z, x, observed, 0.2)
    assert close(got, [2 + 0.2 * 1.875, 9 + 0.2 * 3, 0.2], tol=1e-14), got
    # two channels: the fit is a mean over observed values, each channel counted
    model = Reshape((2, 1, 1))
    x = torch.tensor([1.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1)
    got = objective(
        model,
        torch.zeros(1, 2, dtype=torch.float64),
        x,
        torch.ones(1, 1, 1, 1, dtype=torch.float64),
        0.5,
    )
    assert got.tolist() == [1.0]


def search_by_hand(x, observed, z0, *, gamma, lr, steps, optimiser):
    """The search in plain Python: per image, z_k ← z_k − lr·step(∂L/∂z_k), with
    L = Σ_obs (z − x)²/n + γ·Σ z²/D, and torch's SGD (momentum 0.9) or Adam (β 0.9, 0.999,
    ε 1e-8) written out. Returns the final z and the objective before each step and at the end."""
    d = len(z0)
    n = max(sum(observed), 1)

    def loss(z):
        fit = sum(o * (zk - xk) ** 2 for zk, xk, o in zip(z, x, observed, strict=True)) / n
        return fit + gamma * sum(zk * zk for zk in z) / d

    z, history = list(z0), []
    buf, m, v = [0.0] * d, [0.0] * d, [0.0] * d
    for t in range(1, steps + 1):
        history.append(loss(z))
        g = [
            2 * o * (zk - xk) / n + 2 * gamma * zk / d
            for zk, xk, o in zip(z, x, observed, strict=True)
        ]
        for k in range(d):
            if optimiser == "sgd":
                buf[k] = g[k] if t == 1 else 0.9 * buf[k] + g[k]
                z[k] -= lr * buf[k]
            else:
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
                step = (m[k] / (1 - 0.9**t)) / (math.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
                z[k] -= lr * step
    history.append(loss(z))
    return z, history


# two 2×2 images of one channel, each with a one-pixel hole (image 0 top left, image 1 bottom
# right); the hole's own value in x is what the "input" start encodes
X = pixels([[[0.4, -0.2], [0.1, 0.3]], [[-0.3, 0.2], [0.5, 0.9]]])
MISSING = hole(2, 2, (0, 0, 0), (1, 1, 1))
OBSERVED = [[0, 1, 1, 1], [1, 1, 1, 0]]


@pytest.mark.parametrize("optimiser, steps", [("sgd", 3), ("adam", 2)])
def test_search_from_the_input_by_hand(optimiser, steps):
    model = Reshape((1, 2, 2))
    calls = []
    with torch.no_grad():  # as evaluate calls it: the search turns gradients on for itself
        out, history, latent = invert(
            model,
            X,
            MISSING,
            gamma=0.2,
            steps=steps,
            lr=0.1,
            alpha=0.5,
            start="input",
            optimiser=optimiser,
            on_step=calls.append,
            return_latent=True,
        )
    assert out.shape == (1, 2, 1, 2, 2) and history.shape == (steps + 1, 2)
    assert latent.shape == (1, 2, 4) and not latent.requires_grad
    assert calls == list(range(steps))
    for i in range(2):
        x = X[i].flatten().tolist()
        z, expected = search_by_hand(
            x,
            OBSERVED[i],
            [0.5 * v for v in x],
            gamma=0.2,
            lr=0.1,
            steps=steps,
            optimiser=optimiser,
        )
        assert close(history[:, i], expected), (history[:, i], expected)
        assert close(latent[0, i], z), (latent[0, i], z)  # the final latent itself
        # inside the hole Φ⁻¹(z), the rest x itself
        done = [zk if o == 0 else xk for zk, xk, o in zip(z, x, OBSERVED[i], strict=True)]
        assert close(out[0, i].flatten(), done), (out[0, i], done)
    # the model's parameters: none got a gradient, the frozen one stays frozen
    assert model.scale.requires_grad and model.scale.grad is None
    assert not model.frozen.requires_grad and model.frozen.grad is None


def fill_start():
    """The default start, α·Φ(harmonic fill), α = 0.6: each hole is a corner of its 2×2 image,
    filled over 4·2 sweeps from the mean of its three observed pixels."""
    x = X.flatten(1).tolist()
    starts = [
        corner_fill((x[0][1] + x[0][2] + x[0][3]) / 3, x[0][2], x[0][1], 8),
        corner_fill((x[1][0] + x[1][1] + x[1][2]) / 3, x[1][1], x[1][2], 8),
    ]
    return [[0.6 * v for v in [starts[0]] + x[0][1:]], [0.6 * v for v in x[1][:3] + [starts[1]]]]


def test_the_default_search_starts_from_the_fill_and_takes_adam_steps():
    model = Reshape((1, 2, 2))
    out, history = invert(model, X, MISSING)  # γ 0.01, 150 steps of Adam at lr 0.05
    assert out.shape == (1, 2, 1, 2, 2) and history.shape == (151, 2)
    for i, z0 in enumerate(fill_start()):
        z, expected = search_by_hand(
            X[i].flatten().tolist(),
            OBSERVED[i],
            z0,
            gamma=0.01,
            lr=0.05,
            steps=150,
            optimiser="adam",
        )
        assert close(history[:, i], expected), (history[:, i], expected)


def test_samples_start_from_the_same_point_plus_seeded_noise():
    model = Reshape((1, 2, 2))
    torch.manual_seed(1)
    out, history = invert(
        model,
        X,
        MISSING,
        steps=1,
        samples=3,
        spread=0.3,
        generator=torch.Generator().manual_seed(5),
    )
    assert out.shape == (3, 2, 1, 2, 2) and history.shape == (2, 6)
    # the noise is the generator's (not torch's global one), in the latent's dtype; the first
    # sample of each image has none
    noise = torch.randn((6, 4), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    noise[:2] = 0
    starts = fill_start()
    for row in range(6):
        z0 = [v + 0.3 * e for v, e in zip(starts[row % 2], noise[row].tolist(), strict=True)]
        _, expected = search_by_hand(
            X[row % 2].flatten().tolist(),
            OBSERVED[row % 2],
            z0,
            gamma=0.01,
            lr=0.05,
            steps=1,
            optimiser="adam",
        )
        assert history[0, row].item() == pytest.approx(expected[0], abs=1e-12), row
    torch.manual_seed(2)
    again, _ = invert(
        model,
        X,
        MISSING,
        steps=1,
        samples=3,
        spread=0.3,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(again, out)
    # spread 0.1 by default
    _, history = invert(
        model, X, MISSING, steps=0, samples=2, generator=torch.Generator().manual_seed(5)
    )
    noise = torch.randn((4, 4), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for row in (2, 3):
        z0 = [v + 0.1 * e for v, e in zip(starts[row % 2], noise[row].tolist(), strict=True)]
        _, expected = search_by_hand(
            X[row % 2].flatten().tolist(),
            OBSERVED[row % 2],
            z0,
            gamma=0.01,
            lr=0.05,
            steps=0,
            optimiser="adam",
        )
        assert history[0, row].item() == pytest.approx(expected[0], abs=1e-12), row


def test_one_sample_draws_no_noise():
    # the deterministic completion leaves the caller's generator where it was
    model = Reshape((1, 2, 2))
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    invert(model, X, MISSING, steps=1, generator=gen)
    assert torch.equal(gen.get_state(), state)


def test_parameters_are_given_back_when_a_step_fails():
    model = Reshape((1, 2, 2))

    def stop(i):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        invert(model, X, MISSING, steps=3, on_step=stop)
    assert model.scale.requires_grad and not model.frozen.requires_grad


@pytest.mark.parametrize(
    "what, message",
    [
        (dict(start="middle"), "start must be one of ('fill', 'input'), not 'middle'"),
        (dict(optimiser="lbfgs"), "optimiser must be one of ('adam', 'sgd'), not 'lbfgs'"),
    ],
)
def test_unknown_start_or_optimiser(what, message):
    with pytest.raises(ValueError) as err:
        invert(Reshape((1, 2, 2)), X, MISSING, steps=1, **what)
    assert str(err.value) == message


# --- grey squares -----------------------------------------------------------------------------


def test_square_sizes_and_counts_that_cannot_be_used():
    masks.check_squares(0, 0, 5)
    masks.check_squares(5, 3, 5)  # a square as large as the image fits
    for square, count in [(-1, 1), (1, -1)]:
        with pytest.raises(UserError) as err:
            masks.check_squares(square, count, 5)
        assert str(err.value) == (f"square size ({square}) and count ({count}) must be 0 or more")
    with pytest.raises(UserError) as err:
        masks.check_squares(6, 1, 5)
    assert str(err.value) == (
        "a 6-pixel square does not fit in a 5×5 image; choose a square "
        "size of at most 5 (or a larger --size)"
    )


def test_square_positions_by_the_documented_formula():
    # sha256 of "missingglow-squares:{seed}:{i}:{j}": bytes 0–7 and 8–15, big-endian, mod S−K+1
    got = masks.square_positions(2, 5, 3, 2, 7)
    assert got.dtype == torch.int64 and got.shape == (2, 2)
    for j in range(2):
        d = hashlib.sha256(f"missingglow-squares:2:5:{j}".encode()).digest()
        assert got[j].tolist() == [
            int.from_bytes(d[:8], "big") % 5,
            int.from_bytes(d[8:16], "big") % 5,
        ]
    for square, count in [(0, 2), (3, 0)]:
        none = masks.square_positions(2, 5, square, count, 7)
        assert none.shape == (0, 2) and none.dtype == torch.int64
    with pytest.raises(UserError):
        masks.square_positions(2, 5, 8, 1, 7)


def test_squares_painted_and_masked_by_hand():
    image = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    before = image.clone()
    positions = torch.tensor([[0, 1], [3, 3]])
    inside = {(r, c) for r in (0, 1) for c in (1, 2)} | {(r, c) for r in (3, 4) for c in (3, 4)}
    by_hand = torch.tensor([[(r, c) in inside for c in range(5)] for r in range(5)])
    for fill, kwargs in [(128 / 255, {}), (0.25, {"fill": 0.25})]:
        out = masks.apply_squares(image, positions, 2, **kwargs)
        assert torch.equal(out, torch.where(by_hand, torch.tensor(fill), image))
    assert torch.equal(image, before)  # a copy: the input is untouched
    mask = masks.square_mask(positions, 2, 5)
    assert mask.dtype == torch.bool and torch.equal(mask, by_hand[None])
    # a batch (N, count, 2) gives (N, 1, S, S), each image its own squares
    batch = torch.tensor([[[0, 1], [3, 3]], [[2, 0], [2, 0]], [[4, 4], [0, 0]]])
    got = masks.square_mask(batch, 1, 5)
    assert got.shape == (3, 1, 5, 5) and got.dtype == torch.bool
    for n in range(3):
        expected = torch.zeros(1, 5, 5, dtype=torch.bool)
        for r, c in batch[n].tolist():
            expected[0, r, c] = True
        assert torch.equal(got[n], expected), n


# --- users' images, mask files and alpha channels ---------------------------------------------


def test_pil_images_become_rgb_tensors():
    grey = Image.new("L", (3, 2))
    grey.putdata([0, 51, 102, 153, 204, 255])
    out = from_pil(grey)
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[0, 0.2, 0.4], [0.6, 0.8, 1.0]]).expand(3, 2, 3))
    rgb = Image.new("RGB", (2, 1))
    rgb.putdata([(10, 20, 30), (40, 50, 60)])
    assert torch.equal(from_pil(rgb), torch.tensor([[[10, 40]], [[20, 50]], [[30, 60]]]) / 255)


def test_an_image_file_is_cropped_to_its_centre(tmp_path):
    # 4 wide, 2 high: the shorter side is already 2, so only columns 1 and 2 are kept
    colour = {(r, c): (10 * c + r, 20 * c, 255 - 30 * c) for r in range(2) for c in range(4)}
    img = Image.new("RGB", (4, 2))
    img.putdata([colour[r, c] for r in range(2) for c in range(4)])
    img.save(tmp_path / "photo.png")
    out = load_image(str(tmp_path / "photo.png"), 2)
    expected = torch.tensor([[colour[r, c + 1] for c in range(2)] for r in range(2)])
    assert out.dtype == torch.float32
    assert torch.equal(out, expected.permute(2, 0, 1) / 255)


def test_unreadable_or_absent_images_are_user_errors(tmp_path):
    path = str(tmp_path / "photo.png")
    with pytest.raises(UserError) as err:
        load_image(path, 4)
    assert str(err.value) == f"image {path} not found"
    (tmp_path / "photo.png").write_bytes(b"not an image")
    with pytest.raises(UserError) as err:
        load_image(path, 4)
    assert str(err.value).startswith(f"cannot read {path} as an image (")
    assert str(err.value).endswith("); pass a PNG, JPEG, BMP or WebP file")


def mask_file(tmp_path, size, missing, value=255):
    img = Image.new("L", size, 0)
    for xy in missing:
        img.putpixel(xy, value)
    img.save(tmp_path / "mask.png")
    return str(tmp_path / "mask.png")


def test_one_faint_source_pixel_keeps_its_model_pixel_missing(tmp_path):
    # 40×40 → 2×2 by BOX: the pixel at column 33, row 5 (value 1, non-zero: missing) is under
    # model pixel (0, 1), one source pixel of its 400
    hole = load_mask(mask_file(tmp_path, (40, 40), [(33, 5)], value=1), (40, 40), 2)
    assert torch.equal(hole, torch.tensor([[[False, True], [False, False]]]))


def test_an_upscaled_mask_keeps_its_pixels_whole(tmp_path):
    # 2×2 → 4×4 (NEAREST): source pixel (0, 0) becomes model rows 0–1, columns 0–1
    hole = load_mask(mask_file(tmp_path, (2, 2), [(0, 0)]), (2, 2), 4)
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, :2, :2] = True
    assert torch.equal(hole, expected)


def test_a_colour_mask_file_is_read_as_grey(tmp_path):
    img = Image.new("RGB", (3, 3))
    img.putpixel((1, 2), (255, 255, 255))
    img.save(tmp_path / "mask.png")
    hole = load_mask(str(tmp_path / "mask.png"), (3, 3), 3)
    assert torch.equal(hole, torch.tensor([[[False] * 3, [False] * 3, [False, True, False]]]))


def test_mask_file_errors_word_for_word(tmp_path):
    path = str(tmp_path / "mask.png")
    cases = [
        (lambda: None, (4, 4), f"mask {path} not found"),
        (
            lambda: mask_file(tmp_path, (4, 3), [(0, 0)]),
            (5, 4),
            f"mask {path} is 4×3 but its image is 5×4; pass a mask of the image's size",
        ),
        (
            lambda: mask_file(tmp_path, (4, 4), []),
            (4, 4),
            f"mask {path} marks no pixel as missing; nothing to restore",
        ),
        (
            lambda: mask_file(tmp_path, (2, 2), [(0, 0), (0, 1), (1, 0), (1, 1)]),
            (2, 2),
            f"mask {path} marks every pixel as missing; keep some of the image",
        ),
        (
            lambda: (tmp_path / "mask.png").write_bytes(b"no"),
            (4, 4),
            f"cannot read mask {path} as an image (UnidentifiedImageError); pass a PNG whose "
            "non-zero pixels mark what is missing",
        ),
    ]
    for make, size, message in cases:
        make()
        with pytest.raises(UserError) as err:
            load_mask(path, size, 2)
        assert str(err.value) == message


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparent_below_half_is_the_hole(mode):
    img = Image.new(mode, (2, 2))
    img.putalpha(Image.frombytes("L", (2, 2), bytes([127, 128, 0, 255])))
    assert torch.equal(alpha_mask(img, 2, "x.png"), torch.tensor([[[True, False], [True, False]]]))


def test_a_palette_transparency_is_the_hole_and_no_alpha_is_none():
    img = Image.new("P", (2, 2))
    img.putpalette([0, 0, 0, 255, 255, 255])
    img.putdata([0, 1, 1, 1])
    assert alpha_mask(img, 2, "x.png") is None  # no transparent colour
    assert alpha_mask(img.convert("RGB"), 2, "x.png") is None
    img.info["transparency"] = 0
    assert torch.equal(alpha_mask(img, 2, "x.png"), torch.tensor([[[True, False], [False, False]]]))


def test_an_alpha_opaque_where_the_crop_keeps_is_no_hole():
    assert alpha_mask(Image.new("RGBA", (2, 2), (1, 2, 3, 255)), 2, "x.png") is None
    # 4 wide, 2 high: the crop keeps columns 1 and 2, and column 0 is transparent
    img = Image.new("LA", (4, 2), (9, 255))
    img.putpixel((0, 1), (9, 0))
    assert alpha_mask(img, 2, "x.png") is None
    img.putpixel((1, 1), (9, 0))
    assert torch.equal(alpha_mask(img, 2, "x.png"), torch.tensor([[[False, False], [True, False]]]))
    with pytest.raises(UserError) as err:
        alpha_mask(Image.new("RGBA", (2, 2), (1, 2, 3, 0)), 2, "x.png")
    assert str(err.value) == (
        "the alpha channel of x.png marks every pixel as missing; keep some of the image"
    )


# --- quantisation -----------------------------------------------------------------------------

# 8-bit values and, at 5 bits (bins of 8 values), their bins floor(k / 8)
LEVELS = [0, 7, 8, 127, 128, 131, 255]
BINS_5 = [0, 0, 1, 15, 16, 16, 31]


def test_quantize_by_hand():
    images = torch.tensor(LEVELS, dtype=torch.float64) / 255
    # a bin's lower edge j/32 − 0.5, 5 bits by default; grey 128/255 is exactly 0
    assert quantize(images).tolist() == [j / 32 - 0.5 for j in BINS_5]
    assert quantize(images, 3).tolist() == [k // 32 / 8 - 0.5 for k in LEVELS]
    # the 8-bit value is rounded before the bin is taken: 7.6 is 8 (bin 1), 7.4 is 7 (bin 0)
    assert quantize(torch.tensor([7.4, 7.6]) / 255).tolist() == [-0.5, 1 / 32 - 0.5]


def test_bin_representatives_by_hand():
    # bins of w = 64 values at 2 bits: j·64 + 32; at 8 bits every value is its own
    got = bin_representatives(2)
    assert got.dtype == torch.int64 and got.tolist() == [32, 96, 160, 224]
    assert bin_representatives(5).tolist()[:3] == [4, 12, 20]
    assert bin_representatives(8).tolist() == list(range(256))


def test_dequantize_adds_the_generators_uniform_noise_below_one_bin():
    q = quantize(torch.tensor([[0.0, 0.5], [0.25, 1.0]], dtype=torch.float64))
    torch.manual_seed(1)
    out = dequantize(q, generator=torch.Generator().manual_seed(4))
    noise = torch.rand((2, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert out.dtype == torch.float64 and close(out, q + noise / 32, tol=0)
    assert ((out - q >= 0) & (out - q < 1 / 32)).all()
    torch.manual_seed(2)
    assert close(dequantize(q, 3, generator=torch.Generator().manual_seed(4)), q + noise / 8, tol=0)


def test_to_unit_range_by_hand():
    got = to_unit_range(torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.7, float("nan")]))
    assert got[:5].tolist() == [0.0, 0.0, 0.5, 0.75, 1.0] and got[5].isnan()


def test_luma_of_pure_colours_by_hand():
    # floor((R·19595 + G·38470 + B·7471 + 32768) / 65536) on 8-bit values: Pillow's "L"
    colours = (
        torch.tensor(
            [[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 1, 1], [10, 20, 30]], dtype=torch.float32
        ).T.reshape(3, 1, 5)
        / 255
    )
    got = luma(colours)
    assert got.shape == (1, 1, 5) and got.dtype == torch.float32
    assert torch.equal(got, torch.tensor([[[76, 150, 29, 1, 18]]]) / 255)


def test_luma_is_pillows_grey_for_every_red_green_pair():
    # a brute-force twin: Pillow's convert("L") on all 65536 (R, G) pairs beside four blues
    # (a coefficient or the rounding constant off by one changes a few hundred of them)
    r, g = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    for blue in (0, 1, 128, 255):
        rgb = torch.stack([r, g, torch.full_like(r, blue)]).to(torch.uint8)  # (3, 256, 256)
        pil = Image.frombytes("RGB", (256, 256), bytes(rgb.permute(1, 2, 0).flatten().tolist()))
        expected = torch.frombuffer(bytearray(pil.convert("L").tobytes()), dtype=torch.uint8)
        got = (luma(rgb.double() / 255) * 255).round().to(torch.uint8)
        assert torch.equal(got, expected.view(1, 256, 256)), blue


def test_match_channels_each_way():
    rgb = torch.rand(2, 3, 2, 2)
    grey = torch.rand(2, 1, 2, 2)
    assert match_channels(rgb, None) is rgb and match_channels(rgb, 3) is rgb
    assert match_channels(grey, 1) is grey
    assert torch.equal(match_channels(rgb, 1), luma(rgb))
    assert torch.equal(match_channels(grey, 3), grey.expand(2, 3, 2, 2))
    for have, want in [(2, 3), (2, 1), (3, 2)]:
        with pytest.raises(ValueError) as err:
            match_channels(torch.zeros(1, have, 2, 2), want)
        assert str(err.value) == f"cannot turn {have}-channel images into {want}-channel ones"


def test_to_model_and_from_model_by_hand():
    images = torch.tensor(LEVELS, dtype=torch.float64).view(1, 1, 1, 7) / 255
    # into model space at the bin's centre (j + ½)/32 − 0.5
    x = to_model(images, 5)
    assert x.tolist() == [[[[(j + 0.5) / 32 - 0.5 for j in BINS_5]]]]
    # out: a one-channel model's images repeated as RGB, each centre at its bin's representative
    # 8j + 4; at 8 bits the centre of value k is k itself
    back = from_model(x, 5)
    assert back.shape == (1, 3, 1, 7)
    assert close(
        back, torch.tensor([8 * j + 4 for j in BINS_5]).double().expand(1, 3, 1, 7) / 255, tol=0
    )
    assert close(from_model(to_model(images, 8), 8), images.expand(1, 3, 1, 7), tol=0)
    # an RGB image meets a one-channel model as its luma
    red = torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)
    assert to_model(red, 5, channels=1).item() == (76 // 8 + 0.5) / 32 - 0.5
    assert to_model(red, 5).shape == (1, 3, 1, 1)


def test_from_model_clamps_and_blanks_images_that_are_not_finite():
    x = torch.tensor([[[[-2.0, 0.0], [2.0, 0.1]]], [[[0.0, float("inf")], [0.0, 0.0]]]])
    before = x.clone()
    out = from_model(x, 5)
    assert out.shape == (2, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == [0.0] * 3 and out[0, :, 1, 0].tolist() == [1.0] * 3
    assert out[0, 0, 0, 1].item() == pytest.approx(128 / 255)
    assert out[1].isnan().all() and not out[0].isnan().any()
    assert torch.equal(x, before)
