"""The whole Glow: inverse, log-density against a brute-force Jacobian, latent layout, Φ-space
ops."""

import math

import pytest
import torch

from missingglow import Glow, bits_per_dim, dequantize, quantize

from helpers import brute_force_logdet, randomize


def _model(gen, dtype=torch.float64, **kw):
    """A Glow with data-initialised ActNorms and every other parameter randomly perturbed.

    Kept moderate on purpose: a wildly random flow maps images to huge latents whose scaled
    inverses overflow, which tests nothing but float range.
    """
    cfg = dict(blocks=3, flows=2, hidden=8, image_size=16)
    cfg.update(kw)
    model = Glow(**cfg).to(dtype)
    with torch.no_grad():
        model(_images(gen, n=8, size=cfg["image_size"], dtype=dtype))
    return randomize(model, gen, scale=0.05)


def _images(gen, n=3, size=16, dtype=torch.float64):
    return (torch.rand(n, 3, size, size, generator=gen) - 0.5).to(dtype)


@pytest.mark.parametrize("affine,lu", [(True, True), (False, False), (True, False)])
def test_decode_encode_roundtrip_float64(gen, affine, lu):
    model = _model(gen, affine=affine, lu=lu)
    x = _images(gen)
    with torch.no_grad():
        eps = model.encode(x)
        assert eps.shape == (3, 3 * 16 * 16)
        torch.testing.assert_close(model.decode(eps), x, rtol=0, atol=1e-10)
        raw = model.encode(x, latent="raw")
        assert not torch.allclose(raw, eps), "standardisation must act on randomised priors"
        torch.testing.assert_close(model.decode(raw, latent="raw"), x, rtol=0, atol=1e-10)


def test_decode_encode_roundtrip_float32(gen):
    model = _model(gen, dtype=torch.float32, blocks=4, flows=3, hidden=16, image_size=32)
    x = _images(gen, size=32, dtype=torch.float32)
    with torch.no_grad():
        back = model.decode(model.encode(x))
    assert ((back - x).norm() / x.norm()).item() < 1e-4


def test_log_prob_equals_gaussian_of_phi_plus_brute_force_logdet(gen):
    model = _model(gen, blocks=2, flows=2, hidden=4, image_size=4)
    x = _images(gen, n=2, size=4)
    eps = model.encode(x)
    log_normal = (-0.5 * eps**2 - 0.5 * math.log(2 * math.pi)).sum(1)
    expected = log_normal + brute_force_logdet(lambda v: model.encode(v), x)
    torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-9, atol=1e-9)


def test_encode_concatenates_levels_in_chw_order(gen):
    model = _model(gen)
    x = _images(gen, n=2)
    enc = model(x)
    shapes = model.latent_shapes()
    assert shapes == [(6, 8, 8), (12, 4, 4), (48, 2, 2)]
    assert [tuple(e.shape[1:]) for e in enc.eps] == shapes
    flat = model.encode(x)
    start = 0
    for level in enc.eps:
        count = level[0].numel()
        torch.testing.assert_close(flat[:, start : start + count].view_as(level), level)
        start += count
    # ε is the raw latent standardised by the learned prior of its level
    last = model.blocks[-1]
    mean, log_sd = last.prior(torch.zeros_like(enc.z[-1])).chunk(2, 1)
    torch.testing.assert_close(enc.eps[-1], (enc.z[-1] - mean) / torch.exp(log_sd))


def test_sample_is_seeded_and_scaled_by_temperature(gen):
    model = _model(gen)
    with torch.no_grad():
        a = model.sample(4, 0.7, generator=torch.Generator().manual_seed(5))
        b = model.sample(4, 0.7, generator=torch.Generator().manual_seed(5))
        zero_t = model.sample(2, 0.0)
        centre = model.decode(torch.zeros(1, 3 * 16 * 16, dtype=torch.float64))
        torch.testing.assert_close(
            model.encode(a).std(), torch.tensor(0.7, dtype=torch.float64), atol=0.05, rtol=0
        )
    assert a.shape == (4, 3, 16, 16)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(zero_t, centre.expand(2, -1, -1, -1))


def test_impute_scales_the_latent(gen):
    model = _model(gen)
    x = _images(gen)
    with torch.no_grad():
        torch.testing.assert_close(model.impute(x, 1.0), x, atol=1e-10, rtol=0)
        half = model.impute(x, 0.5)
        torch.testing.assert_close(model.encode(half), 0.5 * model.encode(x), atol=1e-9, rtol=0)


def test_preprocessing_and_bits_per_dim(gen):
    grey = torch.full((1, 3, 2, 2), 128 / 255)
    assert torch.all(quantize(grey, 5) == 0)
    levels = quantize(torch.rand(100, generator=gen), 5)
    assert torch.all((levels + 0.5) * 32 == torch.round((levels + 0.5) * 32))
    assert levels.min() >= -0.5 and levels.max() < 0.5
    noisy = dequantize(levels, 5, generator=gen)
    assert torch.all((noisy >= levels) & (noisy < levels + 1 / 32))
    # a uniform density on [-0.5, 0.5)^D has log p = 0: exactly b bits per dimension
    assert bits_per_dim(torch.tensor(0.0), 5, 12).item() == pytest.approx(5.0)


def test_bad_shapes_are_refused():
    model = Glow(blocks=2, flows=1, hidden=4, image_size=8)
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 3, 6, 6))
    with pytest.raises(ValueError, match="channels|expected"):
        model.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="latent"):
        model.decode(torch.zeros(1, 100))
    with pytest.raises(ValueError):
        Glow(blocks=3, flows=1, hidden=4, image_size=12)
