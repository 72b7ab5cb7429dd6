"""The fast ops (ops.py) against their namesakes in ops_reference.py on fresh random odd-shaped
input: in float64 to 1e-10, and in float32 to tolerances derived from float32 rounding
(tests/float32_tolerances.py)."""

import ast
import inspect
import os
import re
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn import functional as F

from missingglow.flow import fused_step, layers, ops, ops_reference

from float32_tolerances import assert_float32_close, assert_logdet_close

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason=str(ops.WHY_UNAVAILABLE))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# --- actnorm + 1×1 conv -------------------------------------------------------------------------

CHANNEL_SHAPES = [(1, 6, 1, 1), (3, 12, 5, 7), (3, 48, 32, 32), (1, 6, 17, 3), (3, 12, 32, 32)]
LAYOUTS = ["contiguous", "channels_last", "strided"]
FLOAT32_SHAPES = [(1, 6, 1, 1), (3, 12, 5, 7), (2, 48, 9, 7)]  # the float32 tests': fewer, smaller


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
    weight = q + 0.1 * torch.randn(c, c, generator=gen, dtype=dtype) / c**0.5
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
    torch.testing.assert_close(
        y, ops_reference.actnorm_conv(x, loc, scale, weight), rtol=1e-12, atol=1e-12
    )
    back = ops.actnorm_conv_inverse(y, loc, scale, weight)
    torch.testing.assert_close(
        back, ops_reference.actnorm_conv_inverse(y, loc, scale, weight), rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    # the layout rule the fake kernels promise: channels-last stays channels-last
    if layout == "channels_last" and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    else:
        assert y.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", FLOAT32_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_actnorm_conv_float32_is_as_accurate_as_the_reference(
    gen, float32_proper, device, shape, layout
):
    x = _activations(gen, shape, device, layout, torch.float32)
    params = _actnorm_conv_params(gen, shape[1], device, torch.float32, weight_4d=shape[1] == 12)
    wide = [p.double() for p in params]
    loc, scale, weight = (p.abs() for p in wide)
    y = ops.actnorm_conv(x, *params)
    assert y.dtype == torch.float32
    assert_float32_close(
        y,
        ops_reference.actnorm_conv(x, *params),
        ops_reference.actnorm_conv(x.double(), *wide),
        ops_reference.actnorm_conv(x.double().abs(), loc, scale, weight),
        what="y",
    )
    back = ops.actnorm_conv_inverse(y, *params)
    w_inv = torch.linalg.inv(wide[2].view(*wide[2].shape[:2])).abs()
    assert_float32_close(
        back,
        ops_reference.actnorm_conv_inverse(y, *params),
        ops_reference.actnorm_conv_inverse(y.double(), *wide),
        F.conv2d(y.double().abs(), w_inv.view(*w_inv.shape, 1, 1)) / scale + loc,
        what="x back",
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_actnorm_conv_gradients(gen, device, layout):
    x = _activations(gen, (3, 6, 3, 5), device, layout).requires_grad_()
    params = [p.requires_grad_() for p in _actnorm_conv_params(gen, 6, device)]
    # fast_mode checks the Jacobian along random directions: the full one is ~300×300 here
    assert torch.autograd.gradcheck(ops.actnorm_conv, [x, *params], fast_mode=True)
    assert torch.autograd.gradcheck(ops.actnorm_conv_inverse, [x, *params], fast_mode=True)
    small = [
        _activations(gen, (2, 4, 2, 3), device, layout).requires_grad_(),
        *[p.requires_grad_() for p in _actnorm_conv_params(gen, 4, device)],
    ]
    assert torch.autograd.gradcheck(ops.actnorm_conv, small)
    assert torch.autograd.gradcheck(ops.actnorm_conv_inverse, small)
    y = ops.actnorm_conv(x, *params)
    y_ref = ops_reference.actnorm_conv(x, *params)
    weights = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(device)
    grads = torch.autograd.grad((y * weights).sum(), [x, *params])
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), [x, *params])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_actnorm_conv_gradients_reach_the_lu_parameters(gen):
    layer = layers.InvConv2dLU(6).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.randn(2, 6, 4, 4, generator=gen, dtype=torch.float64)
    loc, scale, _ = _actnorm_conv_params(gen, 6, "cpu")
    y = ops.actnorm_conv(x, loc, scale, layer.matrix())
    grads = torch.autograd.grad(y.pow(2).sum(), [layer.w_l, layer.w_s, layer.w_u])
    y_ref = layer(scale * (x + loc))[0]
    grads_ref = torch.autograd.grad(y_ref.pow(2).sum(), [layer.w_l, layer.w_s, layer.w_u])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_actnorm_conv_opcheck(gen, device, layout):
    x = _activations(gen, (3, 6, 5, 7), device, layout)
    params = _actnorm_conv_params(gen, 6, device)
    for op in (
        torch.ops.missingglow.actnorm_conv_forward.default,
        torch.ops.missingglow.actnorm_conv_inverse.default,
    ):
        torch.library.opcheck(
            op, [x.detach().requires_grad_(), *[p.detach().requires_grad_() for p in params]]
        )
    torch.library.opcheck(
        torch.ops.missingglow.actnorm_conv_backward.default, [torch.randn_like(x), x, *params]
    )


def test_actnorm_conv_refuses_bad_arguments():
    x = torch.zeros(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="one per channel"):
        ops.actnorm_conv(x, torch.zeros(3), torch.ones(4), torch.eye(4))
    with pytest.raises(RuntimeError, match="weight must be"):
        ops.actnorm_conv(x, torch.zeros(4), torch.ones(4), torch.eye(3))
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.actnorm_conv(x, torch.zeros(4), torch.ones(4), torch.eye(4, dtype=torch.float64))


# --- ActNorm + 1×1 conv as one GEMM, split for the coupling ------------------------------------


def _gemm_params(gen, c, device, dtype=torch.float64):
    weight = torch.randn(c, c, generator=gen, dtype=dtype) / c**0.5
    bias = torch.randn(c, generator=gen, dtype=dtype)
    return [t.to(device) for t in (weight, bias)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", CHANNEL_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_channel_gemm_split_matches_reference(gen, device, shape, layout):
    """Both outputs and every gradient, the two output gradients taken together, in float64;
    both outputs come back channels-last and the half dense."""
    x = _activations(gen, shape, device, layout).requires_grad_()
    params = [p.requires_grad_() for p in _gemm_params(gen, shape[1], device)]
    got = ops.channel_gemm_split(x, *params)
    want = ops_reference.channel_gemm_split(x, *params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        assert a.is_contiguous(memory_format=torch.channels_last)
    assert got[0].untyped_storage().data_ptr() != got[1].untyped_storage().data_ptr()
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(device) for t in want]
    grads = torch.autograd.grad(got, [x, *params], weights)
    grads_ref = torch.autograd.grad(want, [x, *params], weights)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_channel_gemm_split_gradients(gen, device, layout):
    x = _activations(gen, (2, 4, 3, 5), device, layout).requires_grad_()
    params = [p.requires_grad_() for p in _gemm_params(gen, 4, device)]
    assert torch.autograd.gradcheck(ops.channel_gemm_split, [x, *params])


def test_channel_gemm_split_with_one_output_unused(gen):
    """Autograd hands the backward no gradient for an output nobody used: it counts as zeros."""
    x = _activations(gen, (2, 6, 3, 3), "cpu", "channels_last").requires_grad_()
    params = [p.requires_grad_() for p in _gemm_params(gen, 6, "cpu")]
    for used in (0, 1):
        got = ops.channel_gemm_split(x, *params)[used]
        want = ops_reference.channel_gemm_split(x, *params)[used]
        weights = torch.randn(want.shape, generator=gen, dtype=want.dtype)
        for g, g_ref in zip(
            torch.autograd.grad(got, [x, *params], weights),
            torch.autograd.grad(want, [x, *params], weights),
            strict=True,
        ):
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(3, 6, 5, 7), (1, 4, 1, 1)])  # the second: both layouts at once
def test_channel_gemm_split_opcheck(gen, device, layout, shape):
    x = _activations(gen, shape, device, layout)
    params = _gemm_params(gen, shape[1], device)
    torch.library.opcheck(
        torch.ops.missingglow.channel_gemm_split_forward.default,
        [x.detach().requires_grad_(), *[p.detach().requires_grad_() for p in params]],
    )
    half = _activations(gen, (shape[0], shape[1] // 2, *shape[2:]), device, layout)
    torch.library.opcheck(
        torch.ops.missingglow.channel_gemm_split_backward.default,
        [torch.randn_like(x), half, x, params[0]],
    )


# --- the whole-tensor coupling -------------------------------------------------------------------


def _coupling_both_ways(x, h, y_in, grad_y, grad_logdet, step=None, inverse=None, backward=None):
    """(y, logdet, x back from y_in, its logdet, grad x, grad h of Σ grad_y·y + Σ grad_logdet·logdet
    from the output y_in) by the given ops, or by the reference's (autograd for the gradients)."""
    if step is None:
        xr, hr = x.detach().requires_grad_(), h.detach().requires_grad_()
        y, logdet = ops_reference.coupling_step(xr, hr)
        grads = torch.autograd.grad((y * grad_y).sum() + (logdet * grad_logdet).sum(), [xr, hr])
        back, inv_logdet = ops_reference.coupling_step_inverse(y_in, h)
        return y.detach(), logdet.detach(), back, inv_logdet, *grads
    y, logdet = step(x, h)
    back, inv_logdet = inverse(y_in, h)
    return (y, logdet, back, inv_logdet, *backward(grad_y, grad_logdet, y_in, h))


COUPLING_OUTPUTS = ("y", "logdet", "x back", "inverse logdet", "grad x", "grad h")


def _check_coupling(gen, shape, device, layout, dtype, what):
    """The coupling op's forward, inverse and backward against the reference. float64: to 1e-10.
    float32: as accurate as the float32 reference (assert_float32_close), the logdets within the
    derived bound of coupling_logdet_sd, all against the float64 reference on the same float32
    inputs."""
    x = _activations(gen, shape, device, layout, dtype)
    h = 4 * _activations(gen, shape, device, layout, dtype)  # log_s + 2 of both signs, some far
    grad_y = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    grad_logdet = torch.randn(shape[0], generator=gen, dtype=dtype).to(device)
    y_in = ops_reference.coupling_step(x, h)[0]  # the inverse's and the backward's input
    fast = _coupling_both_ways(
        x,
        h,
        y_in,
        grad_y,
        grad_logdet,
        ops.coupling_step,
        ops.coupling_step_inverse,
        ops.coupling_step_backward,
    )
    wide = [t.double() for t in (x, h, y_in, grad_y, grad_logdet)]
    exact = _coupling_both_ways(*wide)
    if dtype == torch.float64:
        for name, a, b in zip(COUPLING_OUTPUTS, fast, exact, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")
        return
    ref32 = _coupling_both_ways(x, h, y_in, grad_y, grad_logdet)
    log_s = h.chunk(2, 1)[0]
    # where a result cancels, the size of what is rounded on the way: x = y/s − t rounds y/s =
    # x + t; grad log_s = (grad_y·y + grad_logdet)·(1 − s) rounds the sum in brackets
    sizes = {
        "x back": exact[2].abs() + wide[1].abs(),
        "grad h": exact[5].abs() + (wide[3] * wide[2]).abs() + wide[4].abs().view(-1, 1, 1, 1),
    }
    for name, a, r, e in zip(COUPLING_OUTPUTS, fast, ref32, exact, strict=True):
        assert a.dtype == torch.float32, name
        if "logdet" in name:
            assert_logdet_close(a, e, log_s, f"{what}: {name}")
            assert_logdet_close(r, e, log_s, f"the reference's {name}")  # the bound
        else:
            assert_float32_close(a, r, e, sizes.get(name), what=f"{what}: {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", CHANNEL_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_coupling_step_matches_reference(gen, device, shape, layout):
    x = _activations(gen, shape, device, layout)
    h = 3 * _activations(gen, shape, device, layout)
    y, logdet = ops.coupling_step(x, h)
    y_ref, logdet_ref = ops_reference.coupling_step(x, h)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-12, atol=1e-10)
    back, inv_logdet = ops.coupling_step_inverse(y, h)
    back_ref, inv_logdet_ref = ops_reference.coupling_step_inverse(y, h)
    torch.testing.assert_close(back, back_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(inv_logdet, inv_logdet_ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(inv_logdet, -logdet_ref, rtol=1e-12, atol=1e-10)
    channels_last = layout == "channels_last" and not x.is_contiguous()
    assert y.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_coupling_step_gradients(gen, device, layout):
    x = _activations(gen, (3, 6, 3, 5), device, layout).requires_grad_()
    h = (3 * _activations(gen, (3, 6, 3, 5), device, layout)).requires_grad_()
    assert torch.autograd.gradcheck(ops.coupling_step, [x, h])
    assert torch.autograd.gradcheck(ops.coupling_step_inverse, [x, h])
    y, logdet = ops.coupling_step(x, h)
    y_ref, logdet_ref = ops_reference.coupling_step(x, h)
    weights = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(device)
    grads = torch.autograd.grad((y * weights).sum() + logdet.pow(2).sum(), [x, h])
    grads_ref = torch.autograd.grad((y_ref * weights).sum() + logdet_ref.pow(2).sum(), [x, h])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_coupling_step_opcheck(gen, device, layout):
    x = _activations(gen, (3, 6, 5, 7), device, layout)
    h = _activations(gen, (3, 6, 5, 7), device, layout)
    for op in (
        torch.ops.missingglow.coupling_step_forward.default,
        torch.ops.missingglow.coupling_step_inverse.default,
    ):
        torch.library.opcheck(op, [x.detach().requires_grad_(), h.detach().requires_grad_()])
    grad_logdet = torch.randn(3, dtype=x.dtype, device=device)
    torch.library.opcheck(
        torch.ops.missingglow.coupling_step_backward.default,
        [torch.randn_like(x), grad_logdet, x, h],
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", FLOAT32_SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_coupling_step_float32_is_as_accurate_as_the_reference(
    gen, float32_proper, device, shape, layout
):
    _check_coupling(gen, shape, device, layout, torch.float32, f"coupling_step on {device}")


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


# --- the coupling network (fused_step.zero_conv and .coupling_net, ATen's convs) ----------------


def _net_params(gen, c, hidden, device):
    """(w1, b1, w2, b2, w3, b3, s3) of a coupling network for C channels, all of them non-zero."""
    shapes = [
        (hidden, c // 2, 3, 3),
        (hidden,),
        (hidden, hidden, 1, 1),
        (hidden,),
        (c, hidden, 3, 3),
        (c,),
        (1, c, 1, 1),
    ]
    return [(0.3 * torch.randn(s, generator=gen, dtype=torch.float64)).to(device) for s in shapes]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (3, 12, 5, 7), (2, 6, 1, 4)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_coupling_net_matches_reference(gen, device, shape, layout):
    x_a = _activations(gen, (shape[0], shape[1] // 2, *shape[2:]), device, layout)
    params = [p.requires_grad_() for p in _net_params(gen, shape[1], 5, device)]
    w3, b3, s3 = params[4:]
    hidden = _activations(gen, (shape[0], 5, *shape[2:]), device, layout)
    torch.testing.assert_close(
        fused_step.zero_conv(hidden, w3, b3, s3),
        ops_reference.zero_conv(hidden, w3, b3, s3),
        rtol=1e-12,
        atol=1e-12,
    )
    h = fused_step.coupling_net(x_a, *params)
    h_ref = ops_reference.coupling_net(x_a, *params)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn(h.shape, generator=gen, dtype=h.dtype).to(device)
    grads = torch.autograd.grad((h * weights).sum(), params)
    grads_ref = torch.autograd.grad((h_ref * weights).sum(), params)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (3, 12, 5, 7), (2, 6, 1, 4)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_coupling_net_float32_is_as_accurate_as_the_reference(
    gen, float32_proper, device, shape, layout
):
    x_a = _activations(gen, (shape[0], shape[1] // 2, *shape[2:]), device, layout, torch.float32)
    params = [p.float() for p in _net_params(gen, shape[1], 5, device)]
    weights = torch.randn(shape, generator=gen).to(device)

    def net_and_grads(net, x_a, params, weights):
        params = [p.detach().requires_grad_() for p in params]
        h = net(x_a, *params)
        return [h.detach(), *torch.autograd.grad((h * weights).sum(), params)]

    fast = net_and_grads(fused_step.coupling_net, x_a, params, weights)
    ref32 = net_and_grads(ops_reference.coupling_net, x_a, params, weights)
    wide = [x_a.double(), [p.double() for p in params], weights.double()]
    exact = net_and_grads(ops_reference.coupling_net, *wide)
    sizes = net_and_grads(
        ops_reference.coupling_net, wide[0].abs(), [p.abs() for p in wide[1]], wide[2].abs()
    )  # with every value ≥ 0 the ReLUs pass everything
    names = ["h", "w1", "b1", "w2", "b2", "w3", "b3", "s3"]
    for name, a, r, e, size in zip(names, fast, ref32, exact, sizes, strict=True):
        assert a.dtype == torch.float32
        assert_float32_close(a, r, e, size, what=f"coupling_net {name}")


# --- the CPU ops' threads -------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the Linux process's maps")
def test_the_cpu_ops_run_on_torchs_openmp_runtime():
    """at::parallel_for runs serially in a library built without OpenMP, so the ops' loops would
    use one thread whatever torch.set_num_threads says; built with it, the library must share
    torch's OpenMP runtime rather than load a second one."""
    from missingglow import _C

    with open(_C.__file__, "rb") as library:
        binary = library.read()
    # GNU's entry point, or LLVM's and Intel's
    assert b"GOMP_parallel" in binary or b"__kmpc_fork_call" in binary, "built without OpenMP"
    with open("/proc/self/maps") as maps:
        runtimes = {
            line.split()[-1]
            for line in maps
            if re.match(r"lib(gomp|iomp5|omp)[.-]", os.path.basename(line.split()[-1]))
        }
    assert len(runtimes) == 1, runtimes


# --- the SIMD builds of the CPU coupling loops (csrc/coupling_runs*.{h,cpp}) ---------------------


def _simd_builds():
    """The builds of the CPU loops this CPU runs, tried by switching to each (then back again)."""
    if not ops.AVAILABLE:
        return []
    current, builds = ops.coupling_simd(), []
    for name in ("portable", "avx2", "avx512"):
        try:
            ops.coupling_simd(name)
            builds.append(name)
        except ValueError:
            pass
    ops.coupling_simd(current)
    return builds


@pytest.fixture(params=_simd_builds())
def simd_build(request):
    current = ops.coupling_simd()
    assert ops.coupling_simd(request.param) == request.param
    yield request.param
    ops.coupling_simd(current)


def test_the_portable_build_is_always_there():
    assert "portable" in _simd_builds()


# Gathered runs split into chunks with a remainder (12 channels, 16×16), long runs (130 channels),
# short and long channels-first halves, and run lengths that leave tails after 4, 8 and 16 lanes.
SIMD_SHAPES = [
    (3, 12, 16, 16),
    (2, 130, 3, 3),
    (1, 6, 1, 1),
    (3, 6, 5, 7),
    (2, 34, 7, 5),
    (1, 2, 1, 3),
]


@pytest.mark.parametrize("shape", SIMD_SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_simd_build_matches_reference(gen, simd_build, shape, layout, dtype):
    _check_coupling(gen, shape, "cpu", layout, dtype, f"the {simd_build} build")


def test_every_simd_build_is_stable_for_extreme_scales(simd_build):
    x = torch.ones(1, 40, 1, 1)  # 20 lanes: a whole vector and a tail at every width
    h = torch.cat([torch.full((20,), -200.0), torch.full((20,), 0.0)]).view(1, 40, 1, 1)
    h[0, :10] = 200.0
    y, logdet = ops.coupling_step(x, h)
    assert torch.isfinite(logdet).all() and logdet.item() == pytest.approx(10 * -198.0)
    assert (y[0, 20:30] == 1.0).all() and (y[0, 30:] == 0.0).all()


def test_coupling_simd_refuses_a_build_it_does_not_have():
    current = ops.coupling_simd()
    with pytest.raises(ValueError, match="cannot run"):
        ops.coupling_simd("sse9")
    assert ops.coupling_simd() == current


# --- one door to the extension, one reference per op ---------------------------------------------

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(ops.__file__)))


def _touches_the_extension(path):
    """Whether a source file calls torch.ops.missingglow or imports missingglow._C."""
    text = open(path, encoding="utf-8").read()
    if "torch.ops.missingglow" in text:
        return True
    for node in ast.walk(ast.parse(text, path)):
        if isinstance(node, ast.ImportFrom) and any(a.name == "_C" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("_C"):
            return True
        if isinstance(node, ast.Import) and any(a.name.endswith("._C") for a in node.names):
            return True
    return False


def test_only_ops_py_touches_the_extension():
    sources = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(PACKAGE)
        for name in names
        if name.endswith(".py")
    ]
    touching = sorted(
        os.path.relpath(path, PACKAGE) for path in sources if _touches_the_extension(path)
    )
    assert touching == [os.path.join("flow", "ops.py")]


def _public_functions(module):
    return {
        name: inspect.signature(fn)
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == module.__name__
    }


def test_every_fast_op_has_a_reference_of_the_same_name_and_signature():
    fast = _public_functions(ops)
    fast.pop("coupling_simd")  # which build of the CPU loops runs: not an op
    fast.update(
        {
            name: sig
            for name, sig in _public_functions(fused_step).items()
            if name in ("zero_conv", "coupling_net")
        }
    )  # the fused step's coupling network
    assert {"actnorm_conv_backward", "coupling_step_backward", "zero_conv"} <= set(fast)
    assert _public_functions(ops_reference) == fast


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_backward_ops_match_their_references(gen, device, layout):
    x = _activations(gen, (3, 6, 5, 7), device, layout)
    h = 3 * _activations(gen, (3, 6, 5, 7), device, layout)
    grad_y = _activations(gen, (3, 6, 5, 7), device, layout)
    grad_logdet = torch.randn(3, generator=gen, dtype=x.dtype).to(device)
    params = _actnorm_conv_params(gen, 6, device)
    y = ops_reference.coupling_step(x, h)[0]
    grad_half = _activations(gen, (3, 3, 5, 7), device, layout)
    for name, args in [
        ("actnorm_conv_backward", (grad_y, x, *params)),
        ("coupling_step_backward", (grad_y, grad_logdet, y, h)),
        ("channel_gemm_split_backward", (grad_y, grad_half, x, params[2])),
    ]:
        got, want = getattr(ops, name)(*args), getattr(ops_reference, name)(*args)
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


# --- the fake kernels refuse what the C++ ops refuse ---------------------------------------------


def _flow_step_args(c=4, hidden=3, n=2, size=3):
    """Well-formed zeros for the flow step ops: x, loc, scale, W, w1, b1, w2, b2, w3, b3, s3."""
    shapes = [
        (n, c, size, size),
        (1, c, 1, 1),
        (1, c, 1, 1),
        (c, c),
        (hidden, c // 2, 3, 3),
        (hidden,),
        (hidden, hidden, 1, 1),
        (hidden,),
        (c, hidden, 3, 3),
        (c,),
        (1, c, 1, 1),
    ]
    return [torch.zeros(s, dtype=torch.float64) for s in shapes]


def _with(args, **replaced):
    names = ["x", "loc", "scale", "weight", "w1", "b1", "w2", "b2", "w3", "b3", "s3"]
    return [replaced.get(name, arg) for name, arg in zip(names, args, strict=True)]


def _z(*shape, dtype=torch.float64):
    return torch.zeros(shape, dtype=dtype)


# (op, a function of nothing giving its malformed arguments, what the refusal says)
MALFORMED = [
    ("actnorm_conv_forward", lambda: (_z(2, 4, 3, 3), _z(3), _z(4), _z(4, 4)), "one per channel"),
    ("actnorm_conv_forward", lambda: (_z(2, 4, 3, 3), _z(4), _z(4), _z(3, 3)), "weight must be"),
    (
        "actnorm_conv_inverse",
        lambda: (_z(2, 4, 3, 3), _z(4), _z(4), _z(4, 4, dtype=torch.float32)),
        "one dtype",
    ),
    ("actnorm_conv_inverse", lambda: (_z(4), _z(4), _z(4), _z(4, 4)), "N, C, ..."),
    (
        "actnorm_conv_backward",
        lambda: (_z(2, 4, 3, 4), _z(2, 4, 3, 3), _z(4), _z(4), _z(4, 4)),
        "grad_y must match",
    ),
    ("channel_gemm_split_forward", lambda: (_z(2, 4, 3, 3), _z(4, 3), _z(4)), "weight must be"),
    ("channel_gemm_split_forward", lambda: (_z(2, 3, 3, 3), _z(3, 3), _z(3)), "even"),
    ("channel_gemm_split_forward", lambda: (_z(4, 3, 3), _z(4, 4), _z(4)), "N, C, H, W"),
    (
        "channel_gemm_split_forward",
        lambda: (_z(2, 4, 3, 3), _z(4, 4), _z(4, dtype=torch.float32)),
        "one dtype",
    ),
    (
        "channel_gemm_split_backward",
        lambda: (_z(2, 4, 3, 3), _z(2, 4, 3, 3), _z(2, 4, 3, 3), _z(4, 4)),
        "grad_half must be",
    ),
    (
        "channel_gemm_split_backward",
        lambda: (_z(2, 5, 3, 3), _z(2, 2, 3, 3), _z(2, 5, 3, 3), _z(5, 5)),
        "even",
    ),
    (
        "channel_gemm_split_backward",
        lambda: (_z(2, 4, 3, 3), _z(2, 2, 3, 3), _z(2, 4, 3, 3), _z(4, 3)),
        "weight must be",
    ),
    ("channel_gemm_split_backward", lambda: (_z(4, 3), _z(2, 3), _z(4, 3), _z(3, 3)), "N, C, H, W"),
    ("coupling_step_forward", lambda: (_z(2, 3, 3, 3), _z(2, 3, 3, 3)), "even"),
    ("coupling_step_forward", lambda: (_z(2, 4, 3, 3), _z(2, 6, 3, 3)), "one shape"),
    (
        "coupling_step_inverse",
        lambda: (_z(2, 4, 3, 3), _z(2, 4, 3, 3, dtype=torch.float32)),
        "one dtype",
    ),
    ("coupling_step_inverse", lambda: (_z(2, 4, 3, 3, dtype=torch.int64),) * 2, "floating"),
    (
        "coupling_step_backward",
        lambda: (_z(2, 4, 3, 3), _z(3), _z(2, 4, 3, 3), _z(2, 4, 3, 3)),
        "one entry per sample",
    ),
    ("flow_step_forward", lambda: _with(_flow_step_args(), x=_z(2, 6, 3, 3)), "w1 must be"),
    ("flow_step_forward", lambda: _with(_flow_step_args(), w3=_z(4, 2, 3, 3)), "w3 must be"),
    ("flow_step_forward", lambda: _with(_flow_step_args(), x=_z(4, 3, 3)), "N, C, H, W"),
    ("flow_step_inverse", lambda: _with(_flow_step_args(), b2=_z(4)), "b1 and b2 need"),
    ("flow_step_inverse", lambda: _with(_flow_step_args(), loc=_z(3)), "one per channel"),
    (
        "flow_step_backward",
        lambda: (
            _z(2, 4, 3, 3),
            _z(2),
            *_flow_step_args()[:1],
            _z(2, 4, 3, 3),
            _z(2, 4, 3, 3),
            _z(2, 3, 3, 3),
            _z(2, 4, 3, 3),
            *_flow_step_args()[1:],
        ),
        "h1 and h2",
    ),
]


@pytest.mark.parametrize(
    "op,args,refusal", MALFORMED, ids=[f"{op}-{refusal}" for op, _, refusal in MALFORMED]
)
def test_fake_kernels_refuse_what_the_ops_refuse(op, args, refusal):
    """Traced under FakeTensorMode (as torch.compile traces), a malformed call fails in the fake
    kernel's torch._check with the C++ op's words, rather than tracing a graph that fails later."""
    overload = getattr(torch.ops.missingglow, op).default
    with pytest.raises(RuntimeError, match=re.escape(refusal)):
        overload(*args())  # the C++ op itself
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in args()]
        with pytest.raises(RuntimeError, match=re.escape(f"{op}: ") + ".*" + re.escape(refusal)):
            overload(*fake)


def test_fake_kernels_accept_well_formed_calls():
    """The checks refuse only what is malformed: each op traces on good arguments."""
    with FakeTensorMode() as mode:
        x, *params = [mode.from_tensor(t) for t in _flow_step_args()]
        assert ops.actnorm_conv(x, *params[:3]).shape == x.shape
        assert ops.coupling_step(x, x)[1].shape == (2,)
        assert ops.channel_gemm_split(x, params[2], params[0].reshape(-1))[1].shape == (2, 2, 3, 3)
        y, logdet, h1, h2, h = torch.ops.missingglow.flow_step_forward.default(x, *params)
        assert h1.shape == (2, 3, 3, 3)
        grads = torch.ops.missingglow.flow_step_backward.default(
            y, logdet, x, y, h1, h2, h, *params
        )
        assert [g.shape for g in grads] == [t.shape for t in (x, *params)]


# --- the backwards give no gradient to an input that needs none ----------------------------------


def _op_inputs(gen, name):
    """float64 channels-last inputs of an op (every parameter perturbed, so none is trivial)."""
    x = _activations(gen, (2, 6, 4, 5), "cpu", "channels_last")
    h = 3 * _activations(gen, (2, 6, 4, 5), "cpu", "channels_last")
    an = _actnorm_conv_params(gen, 6, "cpu")
    if name.startswith("actnorm_conv"):
        return [x, *an]
    if name.startswith("coupling_step"):
        return [x, h]
    if name == "channel_gemm_split":
        return [x, *_gemm_params(gen, 6, "cpu")]
    return [x, *an, *_net_params(gen, 6, 5, "cpu")]


BACKWARD_OPS = [
    "actnorm_conv",
    "actnorm_conv_inverse",
    "channel_gemm_split",
    "coupling_step",
    "coupling_step_inverse",
    "flow_step",
    "flow_step_inverse",
]


@pytest.mark.parametrize("name", BACKWARD_OPS)
def test_backward_gives_none_to_inputs_that_need_no_gradient(gen, name):
    """With one input requiring grad, the op's backward returns None for every other input, and
    that input's gradient is exactly what it is when all require grad."""
    op = getattr(ops, name)
    inputs = _op_inputs(gen, name)
    wanted = [t.detach().requires_grad_() for t in inputs]
    outputs = op(*wanted)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in outputs]
    all_grads = torch.autograd.grad(outputs, wanted, weights)
    for i in range(len(inputs)):
        alone = [t.detach().requires_grad_(j == i) for j, t in enumerate(inputs)]
        outputs = op(*alone)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        # the op's own backward, called as the engine would (flow_step's op also returns the
        # network's activations h1, h2, h, which get no gradient)
        unused = [None] * (3 if name == "flow_step" else 0)
        node = outputs[0].grad_fn  # a Python formula's node has apply, a C++ one is called
        with torch.no_grad():
            returned = getattr(node, "apply", node)(*weights, *unused)
        assert all(g is None for j, g in enumerate(returned[: len(inputs)]) if j != i), (name, i)
        assert torch.equal(returned[i], all_grads[i]), (name, i)
        (through_autograd,) = torch.autograd.grad(outputs, alone[i], weights)
        assert torch.equal(through_autograd, all_grads[i]), (name, i)
