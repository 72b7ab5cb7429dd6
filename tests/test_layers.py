"""Each layer of flow/layers.py against its own brute-force Jacobian, its inverse, and its
conventions."""

import pytest
import torch

from missingglow.flow import layers

from helpers import brute_force_logdet, randomize


@pytest.fixture(autouse=True)
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _x(gen, n=2, c=4, h=3, w=3):
    return torch.randn(n, c, h, w, generator=gen)


@pytest.mark.parametrize(
    "make",
    [
        lambda: layers.ActNorm(4),
        lambda: layers.InvConv2d(4),
        lambda: layers.InvConv2dLU(4),
        lambda: layers.AffineCoupling(4, hidden=5, affine=True),
        lambda: layers.AffineCoupling(4, hidden=5, affine=False),
        lambda: layers.FlowStep(4, hidden=5, affine=True, lu=True),
        lambda: layers.FlowStep(4, hidden=5, affine=False, lu=False),
    ],
    ids=[
        "actnorm",
        "invconv",
        "invconv_lu",
        "affine",
        "additive",
        "step_affine_lu",
        "step_additive",
    ],
)
def test_layer_logdet_matches_jacobian_and_inverts(make, gen):
    layer = randomize(make().double(), gen, scale=0.3)
    x = _x(gen)
    y, logdet = layer(x)
    assert logdet.shape == (x.shape[0],)
    expected = brute_force_logdet(lambda v: layer(v)[0], x)
    torch.testing.assert_close(logdet, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.reverse(y), x, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y, x), "a randomised layer must not be the identity"


def test_actnorm_data_dependent_init(gen):
    layer = layers.ActNorm(5).double()
    x = 3 + 2 * torch.randn(7, 5, 4, 4, generator=gen)
    y, _ = layer(x)
    flat = y.transpose(0, 1).reshape(5, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(5), atol=1e-10, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(5), atol=1e-5, rtol=0)
    assert layer.initialized.item() == 1
    loc = layer.loc.detach().clone()
    layer(x * 10)  # a second batch must not re-initialise
    torch.testing.assert_close(layer.loc.detach(), loc)
    fresh = layers.ActNorm(5).double()
    fresh.load_state_dict(layer.state_dict())
    fresh(x * 10)  # nor may a loaded one
    torch.testing.assert_close(fresh.loc.detach(), loc)


def test_lu_and_plain_conv_agree_for_the_same_weight(gen):
    lu = randomize(layers.InvConv2dLU(6).double(), gen, scale=0.3)
    plain = layers.InvConv2d(6).double()
    with torch.no_grad():
        plain.weight.copy_(lu.matrix().view(6, 6, 1, 1))
    x = _x(gen, c=6, h=5, w=2)
    y_lu, det_lu = lu(x)
    y_plain, det_plain = plain(x)
    torch.testing.assert_close(y_lu, y_plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(det_lu, det_plain, rtol=1e-10, atol=1e-10)


def test_lu_init_is_a_rotation():
    weight = layers.InvConv2dLU(8).double().matrix()
    torch.testing.assert_close(weight @ weight.T, torch.eye(8), atol=1e-5, rtol=0)


def test_affine_coupling_follows_the_spec_formula(gen):
    layer = randomize(layers.AffineCoupling(6, hidden=7).double(), gen, scale=0.3)
    x = _x(gen, c=6)
    y, logdet = layer(x)
    x_a, x_b = x.chunk(2, 1)
    log_s, t = layer.net(x_a).chunk(2, 1)
    s = torch.sigmoid(log_s + 2)
    torch.testing.assert_close(y, torch.cat([x_a, (x_b + t) * s], 1))
    torch.testing.assert_close(logdet, torch.log(s).flatten(1).sum(1))


def test_additive_coupling_only_shifts(gen):
    layer = randomize(layers.AffineCoupling(6, hidden=7, affine=False).double(), gen, scale=0.3)
    x = _x(gen, c=6)
    y, logdet = layer(x)
    x_a, x_b = x.chunk(2, 1)
    torch.testing.assert_close(y, torch.cat([x_a, x_b + layer.net(x_a)], 1))
    assert torch.all(logdet == 0)


def test_zero_conv_pads_with_ones(gen):
    layer = layers.ZeroConv2d(2, 3).double()
    with torch.no_grad():
        layer.conv.weight.fill_(1.0)
    out = layer(torch.zeros(1, 2, 4, 4))
    # a corner sees 5 padded ones per input channel, an edge 3, the interior none
    assert out[0, 0, 0, 0].item() == 10
    assert out[0, 0, 0, 1].item() == 6
    assert out[0, 0, 1, 1].item() == 0


def test_squeeze_layout_and_inverse(gen):
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).view(2, 3, 4, 6)
    y = layers.squeeze2x2(x)
    assert y.shape == (2, 12, 2, 3)
    # channel c*4 + 2*dy + dx at (h, w) holds pixel (2h+dy, 2w+dx) of channel c
    assert y[1, 2 * 4 + 2 * 1 + 0, 1, 2] == x[1, 2, 3, 4]
    assert torch.equal(layers.unsqueeze2x2(y), x)
