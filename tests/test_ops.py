"""Fused ops against the pure-PyTorch reference, in float64, on fresh random inputs with odd shapes."""
import pytest
import torch

from missingglow import ops, reference

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason=str(ops.WHY_UNAVAILABLE))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = [(1, 3, 1, 1), (3, 6, 5, 7), (3, 24, 32, 32), (1, 3, 17, 3)]


def _inputs(gen, shape, device, dtype=torch.float64, contiguous=True):
    if contiguous:
        make = lambda: torch.randn(shape, generator=gen, dtype=dtype)
    else:  # every other channel of a wider tensor: a strided, non-contiguous view
        make = lambda: torch.randn(shape[0], shape[1] * 2, *shape[2:], generator=gen, dtype=dtype)[:, ::2]
    return [(3 * make()).to(device) for _ in range(3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_coupling_matches_reference(gen, device, shape, contiguous):
    x_b, log_s, t = _inputs(gen, shape, device, contiguous=contiguous)
    y, logdet = ops.coupling_forward(x_b, log_s, t)
    y_ref, logdet_ref = reference.affine_coupling_forward(x_b, log_s, t)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-12, atol=1e-10)
    back, inv_logdet = ops.coupling_inverse(y, log_s, t)
    back_ref, inv_logdet_ref = reference.affine_coupling_inverse(y, log_s, t)
    torch.testing.assert_close(back, back_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back, x_b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(inv_logdet, inv_logdet_ref, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_coupling_gradients(gen, device):
    inputs = [v.requires_grad_() for v in _inputs(gen, (3, 6, 3, 5), device)]
    assert torch.autograd.gradcheck(ops.coupling_forward, inputs)
    assert torch.autograd.gradcheck(ops.coupling_inverse, inputs)
    y, logdet = ops.coupling_forward(*inputs)
    y_ref, logdet_ref = reference.affine_coupling_forward(*inputs)
    weights = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(device)
    grads = torch.autograd.grad((y * weights).sum() + logdet.pow(2).sum(), inputs)
    grads_ref = torch.autograd.grad((y_ref * weights).sum() + logdet_ref.pow(2).sum(), inputs)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_coupling_opcheck(gen, device):
    args = _inputs(gen, (3, 6, 5, 7), device)
    torch.library.opcheck(torch.ops.missingglow.coupling_forward.default,
                          [a.requires_grad_() for a in args])
    torch.library.opcheck(torch.ops.missingglow.coupling_inverse.default,
                          [a.detach().requires_grad_() for a in args])
    grad_y, grad_logdet = torch.randn_like(args[0]), torch.randn(3, dtype=args[0].dtype, device=device)
    torch.library.opcheck(torch.ops.missingglow.coupling_backward.default,
                          [grad_y, grad_logdet, *[a.detach() for a in args]])


def test_coupling_is_stable_for_extreme_scales():
    x = torch.ones(1, 2, 1, 1, dtype=torch.float32)
    log_s = torch.tensor([-200.0, 200.0]).view(1, 2, 1, 1)
    y, logdet = ops.coupling_forward(x, log_s, torch.zeros_like(x))
    assert torch.isfinite(logdet).all() and logdet.item() == pytest.approx(-198.0)


def test_bad_arguments_are_refused():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="one shape"):
        ops.coupling_forward(x, torch.zeros(2, 3, 4, 5), x)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.coupling_forward(x, x.double(), x)
