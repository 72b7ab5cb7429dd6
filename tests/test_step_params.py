"""A block's parameter-only work done once for all its steps (flow/step_params.py) against each
step's own math, and whole fused blocks against reference blocks.

float64, odd shapes, every parameter randomly perturbed (conftest's `randomize`), LU and full
1×1 convs, affine and additive couplings: the values and the gradients of every parameter.
"""

import pytest
import torch
from torch.nn import functional as F

from missingglow.flow import fused_step, ops, ops_reference
from missingglow.flow.model import Block
from missingglow.flow.step_params import prepare_steps

from helpers import randomize

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason=str(ops.WHY_UNAVAILABLE))

KINDS = [(True, True), (True, False), (False, True), (False, False)]  # (affine, lu)


def _steps(gen, count=3, c=10, hidden=5, affine=True, lu=True):
    steps = [fused_step.FusedFlowStep(c, hidden, affine, lu).double() for _ in range(count)]
    for step in steps:
        randomize(step, gen, scale=0.2)
    return steps


def _per_step(step, height, width):
    """A step's tensors computed on their own, with the layers' and the reference ops' math:
    (W, (W·diag(scale))ᵀ, W·diag(scale)·loc, (diag(1/scale)·W⁻¹)ᵀ, logdet of one image)."""
    loc, scale = step.actnorm.loc.reshape(-1), step.actnorm.scale.reshape(-1)
    matrix = step.invconv.matrix()
    folded = matrix * scale[None, :]
    image = torch.zeros(1, loc.numel(), height, width, dtype=loc.dtype)
    logdet = step.actnorm.logdet(image)[0] + step.invconv(image)[1][0]
    inverse = torch.linalg.inv(matrix) / scale[:, None]
    return matrix, folded.T, folded @ loc, inverse.T, logdet


def _zero_conv_pieces(step, params, hidden):
    """(the zero-conv of `hidden` from the prepared tensors, from the reference op)."""
    net = step.coupling.net
    fast = F.conv2d(hidden, params.w3, None, padding=1) + params.border
    return fast, ops_reference.zero_conv(hidden, net[4].conv.weight, net[4].conv.bias, net[4].scale)


@pytest.mark.parametrize("affine,lu", KINDS)
@pytest.mark.parametrize("height,width", [(5, 3), (1, 1), (2, 7)])
def test_batched_tensors_equal_each_steps_own(gen, affine, lu, height, width):
    steps = _steps(gen, affine=affine, lu=lu)
    forward = prepare_steps(steps, height, width)
    inverse = prepare_steps(steps, height, width, inverse=True)
    assert inverse.logdet is None and len(forward.steps) == len(steps)
    logdet = 0
    for step, fwd, inv in zip(steps, forward.steps, inverse.steps, strict=True):
        matrix, gemm_weight, gemm_bias, inverse_weight, step_logdet = _per_step(step, height, width)
        logdet = logdet + step_logdet
        for got, want in [
            (fwd.matrix, matrix),
            (inv.matrix, matrix),
            (fwd.gemm_weight, gemm_weight),
            (fwd.gemm_bias, gemm_bias),
            (inv.gemm_weight, inverse_weight),
            (inv.gemm_bias, -step.actnorm.loc.reshape(-1)),
        ]:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        net = step.coupling.net
        for got, want in [
            (fwd.w1, net[0].weight),
            (fwd.b1, net[0].bias),
            (fwd.w2, net[2].weight),
            (fwd.b2, net[2].bias),
        ]:
            assert torch.equal(got, want)
        assert fwd.w1.is_contiguous(memory_format=torch.channels_last)
        assert fwd.w3.is_contiguous(memory_format=torch.channels_last)
        hidden = torch.randn(2, 5, height, width, generator=gen, dtype=torch.float64)
        fast, ref = _zero_conv_pieces(step, fwd, hidden)
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(forward.logdet, logdet, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("affine,lu", KINDS)
def test_batched_tensors_give_each_parameter_its_own_gradient(gen, affine, lu):
    """Σ random weights × every prepared tensor (and the logdet), batched and step by step: the
    same gradient for every parameter of every step."""
    steps = _steps(gen, affine=affine, lu=lu)
    height, width = 3, 5
    hidden = torch.randn(2, 5, height, width, generator=gen, dtype=torch.float64)
    params = [p for step in steps for p in step.parameters()]
    draws = {}

    def weigh(key, t):
        if key not in draws:
            draws[key] = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        return (draws[key] * t).sum()

    def batched():
        forward = prepare_steps(steps, height, width)
        loss = 3 * forward.logdet
        for i, (step, p) in enumerate(zip(steps, forward.steps, strict=True)):
            for name in ("matrix", "gemm_weight", "gemm_bias", "w1", "b1", "w2", "b2"):
                loss = loss + weigh((i, name), getattr(p, name))
            loss = loss + weigh((i, "net"), _zero_conv_pieces(step, p, hidden)[0])
        return loss

    def one_by_one():
        loss = 0
        for i, step in enumerate(steps):
            matrix, gemm_weight, gemm_bias, _, logdet = _per_step(step, height, width)
            net = step.coupling.net
            loss = loss + 3 * logdet
            for name, t in [
                ("matrix", matrix),
                ("gemm_weight", gemm_weight),
                ("gemm_bias", gemm_bias),
                ("w1", net[0].weight),
                ("b1", net[0].bias),
                ("w2", net[2].weight),
                ("b2", net[2].bias),
                (
                    "net",
                    ops_reference.zero_conv(
                        hidden, net[4].conv.weight, net[4].conv.bias, net[4].scale
                    ),
                ),
            ]:
                loss = loss + weigh((i, name), t)
        return loss

    got = torch.autograd.grad(batched(), params)
    want = torch.autograd.grad(one_by_one(), params)
    names = [f"{i}.{n}" for i, step in enumerate(steps) for n, _ in step.named_parameters()]
    for name, g, g_ref in zip(names, got, want, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_steps_of_different_kinds_are_refused(gen):
    steps = _steps(gen, count=1) + _steps(gen, count=1, lu=False)
    with pytest.raises(ValueError, match="one kind"):
        prepare_steps(steps, 2, 2)


def _blocks(gen, affine, lu, flows=3, split=True):
    """A reference block and a fused one with the same randomised, data-initialised state."""
    ref = Block(5, flows, 7, affine, lu, split=split, impl="reference").double()
    fast = Block(5, flows, 7, affine, lu, split=split, impl="fused").double()
    with torch.no_grad():
        ref(torch.randn(4, 5, 10, 6, generator=gen, dtype=torch.float64))  # ActNorms' data init
    randomize(ref, gen, scale=0.05)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize(
    "affine,lu,driver",
    [(*kind, False) for kind in KINDS] + [(True, True, True), (True, False, True)],
)
@pytest.mark.parametrize("split", [True, False])
def test_fused_block_matches_reference_block(gen, affine, lu, driver, split, monkeypatch):
    """Squeezed to 5×3: every output of the block, its inverse, and the gradient of x and of
    every parameter through log p, the logdet and the latents; affine steps also through the
    C++ driver, which takes its 1×1 conv matrix from the batched pass."""
    monkeypatch.setattr(fused_step.FusedFlowStep, "driver", driver)
    ref, fast = _blocks(gen, affine, lu, split=split)
    x = torch.randn(3, 5, 10, 6, generator=gen, dtype=torch.float64)
    outs = []
    for block in (fast, ref):
        x_in = x.clone().requires_grad_()
        kept, logdet, log_p, z, eps = block(x_in)
        weights = torch.arange(1.0, 4, dtype=x.dtype)
        loss = ((log_p + logdet) * weights).sum() + (z * z).sum() + eps.sum()
        if kept is not None:
            loss = loss + (kept * kept.detach()).sum()
        grads = torch.autograd.grad(loss, [x_in, *block.parameters()])
        outs.append(([t for t in (kept, logdet, log_p, z, eps) if t is not None], grads))
    (values, grads), (values_ref, grads_ref) = outs
    for v, v_ref in zip(values, values_ref, strict=True):
        torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-10)
    names = ["x"] + [n for n, _ in ref.named_parameters()]
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(
            g,
            g_ref,
            rtol=1e-9,
            atol=1e-9 * (1 + g_ref.abs().max().item()),
            msg=lambda m: f"{name}: {m}",
        )
    with torch.no_grad():
        kept, _, _, z, eps = ref(x)
        for standardised, latent in ((True, eps), (False, z)):
            back = fast.reverse(kept, latent, standardised=standardised)
            torch.testing.assert_close(
                back, ref.reverse(kept, latent, standardised=standardised), rtol=1e-10, atol=1e-10
            )
            torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9)


def test_a_block_runs_its_steps_from_one_batched_pass(gen, monkeypatch):
    """Forward and reverse prepare the block's parameter tensors once per call, for all of its
    steps; only a block's first batch, which initialises each ActNorm, runs step by step."""
    from missingglow.flow import step_params

    _, fast = _blocks(gen, True, True, flows=4)
    calls = []
    real = step_params.prepare_steps

    def counting(steps, *args, **kwargs):
        calls.append(len(steps))
        return real(steps, *args, **kwargs)

    monkeypatch.setattr(fused_step, "prepare_steps", counting)
    x = torch.randn(2, 5, 10, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        kept, _, _, _, eps = fast(x)
        fast.reverse(kept, eps)
    assert calls == [4, 4]
    fresh = Block(5, 4, 7, True, True, split=True, impl="fused").double()
    calls.clear()
    with torch.no_grad():
        fresh(x)
        fresh(x)
    assert calls == [1, 1, 1, 1, 4]  # the first batch initialises step by step
