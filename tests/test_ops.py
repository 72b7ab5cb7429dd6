"""Fused ops against their pure-PyTorch references, in float64, on fresh random odd-shaped input."""
import pytest
import torch

from missingglow.flow import ops, reference

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason=str(ops.WHY_UNAVAILABLE))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- actnorm + 1×1 conv -------------------------------------------------------------------------

CHANNEL_SHAPES = [(1, 6, 1, 1), (3, 12, 5, 7), (3, 48, 32, 32), (1, 6, 17, 3), (3, 12, 32, 32)]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _activations(gen, shape, device, layout, dtype=torch.float64):
    if layout == "strided":  # every other channel of a wider tensor: neither layout is dense
        x = torch.randn(shape[0], shape[1] * 2, *shape[2:], generator=gen, dtype=dtype)[:, ::2]
    else:
        x = torch.randn(shape, generator=gen, dtype=dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device)


def _actnorm_conv_params(gen, c, device, dtype=torch.float64, weight_4d=False):
    loc = torch.randn(1, c, 1, 1, generator=gen, dtype=dtype)
    scale = torch.rand(1, c, 1, 1, generator=gen, dtype=dtype) + 0.5
    scale[0, 0] *= -1  # ActNorm's scale may be negative: the logdet uses |scale|
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=dtype))
    weight = q + 0.1 * torch.randn(c, c, generator=gen, dtype=dtype) / c ** 0.5
    if weight_4d:
        weight = weight.view(c, c, 1, 1)
    return [t.to(device) for t in (loc, scale, weight)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", CHANNEL_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_actnorm_conv_matches_reference(gen, device, shape, layout):
    x = _activations(gen, shape, device, layout)
    loc, scale, weight = _actnorm_conv_params(gen, shape[1], device, weight_4d=shape[1] == 12)
    y = ops.actnorm_conv(x, loc, scale, weight)
    torch.testing.assert_close(y, reference.actnorm_conv(x, loc, scale, weight),
                               rtol=1e-12, atol=1e-12)
    back = ops.actnorm_conv_inverse(y, loc, scale, weight)
    torch.testing.assert_close(back, reference.actnorm_conv_inverse(y, loc, scale, weight),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    # the layout rule the fake kernels promise: channels-last stays channels-last
    if layout == "channels_last" and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    else:
        assert y.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_actnorm_conv_gradients(gen, device, layout):
    x = _activations(gen, (3, 6, 3, 5), device, layout).requires_grad_()
    params = [p.requires_grad_() for p in _actnorm_conv_params(gen, 6, device)]
    # fast_mode checks the Jacobian along random directions: the full one is ~300×300 here
    assert torch.autograd.gradcheck(ops.actnorm_conv, [x, *params], fast_mode=True)
    assert torch.autograd.gradcheck(ops.actnorm_conv_inverse, [x, *params], fast_mode=True)
    small = [_activations(gen, (2, 4, 2, 3), device, layout).requires_grad_(),
             *[p.requires_grad_() for p in _actnorm_conv_params(gen, 4, device)]]
    assert torch.autograd.gradcheck(ops.actnorm_conv, small)
    assert torch.autograd.gradcheck(ops.actnorm_conv_inverse, small)
    y = ops.actnorm_conv(x, *params)
    y_ref = reference.actnorm_conv(x, *params)
    weights = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(device)
    grads = torch.autograd.grad((y * weights).sum(), [x, *params])
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), [x, *params])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_actnorm_conv_gradients_reach_the_lu_parameters(gen):
    layer = reference.InvConv2dLU(6).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.randn(2, 6, 4, 4, generator=gen, dtype=torch.float64)
    loc, scale, _ = _actnorm_conv_params(gen, 6, "cpu")
    y = ops.actnorm_conv(x, loc, scale, layer.matrix())
    grads = torch.autograd.grad(y.pow(2).sum(), [layer.w_l, layer.w_s, layer.w_u])
    y_ref = layer(scale * (x + loc))[0]
    grads_ref = torch.autograd.grad(y_ref.pow(2).sum(), [layer.w_l, layer.w_s, layer.w_u])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_actnorm_conv_opcheck(gen, device, layout):
    x = _activations(gen, (3, 6, 5, 7), device, layout)
    params = _actnorm_conv_params(gen, 6, device)
    for op in (torch.ops.missingglow.actnorm_conv_forward.default,
               torch.ops.missingglow.actnorm_conv_inverse.default):
        torch.library.opcheck(op, [x.detach().requires_grad_(),
                                   *[p.detach().requires_grad_() for p in params]])
    torch.library.opcheck(torch.ops.missingglow.actnorm_conv_backward.default,
                          [torch.randn_like(x), x, *params])


def test_actnorm_conv_refuses_bad_arguments():
    x = torch.zeros(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="one per channel"):
        ops.actnorm_conv(x, torch.zeros(3), torch.ones(4), torch.eye(4))
    with pytest.raises(RuntimeError, match="weight must be"):
        ops.actnorm_conv(x, torch.zeros(4), torch.ones(4), torch.eye(3))
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.actnorm_conv(x, torch.zeros(4), torch.ones(4), torch.eye(4, dtype=torch.float64))


# --- the whole-tensor coupling -------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", CHANNEL_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_coupling_step_matches_reference(gen, device, shape, layout):
    x = _activations(gen, shape, device, layout)
    h = 3 * _activations(gen, shape, device, layout)
    y, logdet = ops.coupling_step(x, h)
    y_ref, logdet_ref = reference.coupling_step(x, h)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-12, atol=1e-10)
    back, inv_logdet = ops.coupling_step_inverse(y, h)
    back_ref, inv_logdet_ref = reference.coupling_step_inverse(y, h)
    torch.testing.assert_close(back, back_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(inv_logdet, inv_logdet_ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(inv_logdet, -logdet_ref, rtol=1e-12, atol=1e-10)
    channels_last = layout == "channels_last" and not x.is_contiguous()
    assert y.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_coupling_step_gradients(gen, device, layout):
    x = _activations(gen, (3, 6, 3, 5), device, layout).requires_grad_()
    h = (3 * _activations(gen, (3, 6, 3, 5), device, layout)).requires_grad_()
    assert torch.autograd.gradcheck(ops.coupling_step, [x, h])
    assert torch.autograd.gradcheck(ops.coupling_step_inverse, [x, h])
    y, logdet = ops.coupling_step(x, h)
    y_ref, logdet_ref = reference.coupling_step(x, h)
    weights = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(device)
    grads = torch.autograd.grad((y * weights).sum() + logdet.pow(2).sum(), [x, h])
    grads_ref = torch.autograd.grad((y_ref * weights).sum() + logdet_ref.pow(2).sum(), [x, h])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_coupling_step_opcheck(gen, device, layout):
    x = _activations(gen, (3, 6, 5, 7), device, layout)
    h = _activations(gen, (3, 6, 5, 7), device, layout)
    for op in (torch.ops.missingglow.coupling_step_forward.default,
               torch.ops.missingglow.coupling_step_inverse.default):
        torch.library.opcheck(op, [x.detach().requires_grad_(), h.detach().requires_grad_()])
    grad_logdet = torch.randn(3, dtype=x.dtype, device=device)
    torch.library.opcheck(torch.ops.missingglow.coupling_step_backward.default,
                          [torch.randn_like(x), grad_logdet, x, h])


def test_coupling_step_is_stable_for_extreme_scales():
    x = torch.ones(1, 4, 1, 1)
    h = torch.tensor([-200.0, 200.0, 0.0, 0.0]).view(1, 4, 1, 1)
    y, logdet = ops.coupling_step(x, h)
    assert torch.isfinite(logdet).all() and logdet.item() == pytest.approx(-198.0)
    assert y[0, 2].item() == 0.0 and y[0, 3].item() == pytest.approx(1.0)


def test_coupling_step_refuses_bad_arguments():
    x = torch.zeros(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="even"):
        ops.coupling_step(torch.zeros(2, 3, 3, 3), torch.zeros(2, 3, 3, 3))
    with pytest.raises(RuntimeError, match="one shape"):
        ops.coupling_step(x, torch.zeros(2, 4, 3, 4))
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.coupling_step(x, x.double())


# --- the coupling network (ops.zero_conv and ops.coupling_net, ATen's convs) --------------------

def _net_params(gen, c, hidden, device):
    """(w1, b1, w2, b2, w3, b3, s3) of a coupling network for C channels, all of them non-zero."""
    shapes = [(hidden, c // 2, 3, 3), (hidden,), (hidden, hidden, 1, 1), (hidden,),
              (c, hidden, 3, 3), (c,), (1, c, 1, 1)]
    return [(0.3 * torch.randn(s, generator=gen, dtype=torch.float64)).to(device) for s in shapes]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (3, 12, 5, 7), (2, 6, 1, 4)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_coupling_net_matches_reference(gen, device, shape, layout):
    x_a = _activations(gen, (shape[0], shape[1] // 2, *shape[2:]), device, layout)
    params = [p.requires_grad_() for p in _net_params(gen, shape[1], 5, device)]
    w3, b3, s3 = params[4:]
    hidden = _activations(gen, (shape[0], 5, *shape[2:]), device, layout)
    torch.testing.assert_close(ops.zero_conv(hidden, w3, b3, s3),
                               reference.zero_conv(hidden, w3, b3, s3), rtol=1e-12, atol=1e-12)
    h = ops.coupling_net(x_a, *params)
    h_ref = reference.coupling_net(x_a, *params)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn(h.shape, generator=gen, dtype=h.dtype).to(device)
    grads = torch.autograd.grad((h * weights).sum(), params)
    grads_ref = torch.autograd.grad((h_ref * weights).sum(), params)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


# --- the SIMD builds of the CPU coupling loops (csrc/coupling_runs*.{h,cpp}) ---------------------

def _simd_builds():
    """The builds of the CPU loops this CPU runs, tried by switching to each (then back again)."""
    if not ops.AVAILABLE:
        return []
    from missingglow import _C

    current, builds = _C.coupling_simd(), []
    for name in ("portable", "avx2", "avx512"):
        try:
            _C.coupling_simd(name)
            builds.append(name)
        except ValueError:
            pass
    _C.coupling_simd(current)
    return builds


@pytest.fixture(params=_simd_builds())
def simd_build(request):
    from missingglow import _C

    current = _C.coupling_simd()
    assert _C.coupling_simd(request.param) == request.param
    yield request.param
    _C.coupling_simd(current)


def test_the_portable_build_is_always_there():
    assert "portable" in _simd_builds()


# Gathered runs split into chunks with a remainder (12 channels, 16×16), long runs (130 channels),
# short and long channels-first halves, and run lengths that leave tails after 4, 8 and 16 lanes.
SIMD_SHAPES = [(3, 12, 16, 16), (2, 130, 3, 3), (1, 6, 1, 1), (3, 6, 5, 7), (2, 34, 7, 5),
               (1, 2, 1, 3)]


@pytest.mark.parametrize("shape", SIMD_SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_simd_build_matches_reference(gen, simd_build, shape, layout, dtype):
    x = _activations(gen, shape, "cpu", layout)
    h = 4 * _activations(gen, shape, "cpu", layout)  # log_s + 2 of both signs, some far from 0
    grad_y = torch.randn(shape, generator=gen, dtype=x.dtype)
    grad_logdet = torch.randn(shape[0], generator=gen, dtype=x.dtype)
    xr, hr = x.detach().requires_grad_(), h.detach().requires_grad_()
    y_ref, logdet_ref = reference.coupling_step(xr, hr)
    grads_ref = torch.autograd.grad((y_ref * grad_y).sum() + (logdet_ref * grad_logdet).sum(),
                                    [xr, hr])

    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    xs, hs = x.to(dtype), h.to(dtype)
    y, logdet = ops.coupling_step(xs, hs)
    torch.testing.assert_close(y.double(), y_ref.detach(), **tol)
    per_sample_tol = dict(rtol=tol["rtol"], atol=tol["atol"] * x[0].numel())
    torch.testing.assert_close(logdet.double(), logdet_ref.detach(), **per_sample_tol)
    back, inv_logdet = ops.coupling_step_inverse(y_ref.detach().to(dtype), hs)
    torch.testing.assert_close(back.double(), x, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    torch.testing.assert_close(inv_logdet.double(), -logdet_ref.detach(), **per_sample_tol)
    grad_x, grad_h = torch.ops.missingglow.coupling_step_backward.default(
        grad_y.to(dtype), grad_logdet.to(dtype), y_ref.detach().to(dtype), hs)
    torch.testing.assert_close(grad_x.double(), grads_ref[0], **tol)
    torch.testing.assert_close(grad_h.double(), grads_ref[1], **tol)


def test_every_simd_build_is_stable_for_extreme_scales(simd_build):
    x = torch.ones(1, 40, 1, 1)  # 20 lanes: a whole vector and a tail at every width
    h = torch.cat([torch.full((20,), -200.0), torch.full((20,), 0.0)]).view(1, 40, 1, 1)
    h[0, :10] = 200.0
    y, logdet = ops.coupling_step(x, h)
    assert torch.isfinite(logdet).all() and logdet.item() == pytest.approx(10 * -198.0)
    assert (y[0, 20:30] == 1.0).all() and (y[0, 30:] == 0.0).all()


def test_coupling_simd_refuses_a_build_it_does_not_have():
    from missingglow import _C

    current = _C.coupling_simd()
    with pytest.raises(ValueError, match="cannot run"):
        _C.coupling_simd("sse9")
    assert _C.coupling_simd() == current
