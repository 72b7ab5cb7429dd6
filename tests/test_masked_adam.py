"""The compiled masked_adam_ (csrc/masked_adam.cpp) against its reference (ops_reference.py):
the same parameters, moments and step counts after good and bad steps, in float64 and float32, on
tensors of odd shapes and layouts; opcheck; and what the op refuses."""

import pytest
import torch

from missingglow.flow import ops, ops_reference

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason="missingglow._C is not built")

BETAS, EPS = (0.9, 0.999), 1e-8


def _tensors(gen, dtype):
    """Params of odd shapes and layouts, as a Glow has them: channels-last 3×3 weights, 1×1
    weights (whose grads carry other strides in their size-1 dims: `_layout` makes them
    channels-last), vectors, a scalar, an empty one, and in the middle one big enough that two
    threads split the flat index inside it and run on across the borders around it."""
    cl = torch.channels_last
    params = [
        torch.randn(7, 5, 3, 3, generator=gen, dtype=dtype).contiguous(memory_format=cl),
        torch.randn(6, 6, 1, 1, generator=gen, dtype=dtype),
        torch.randn(13, generator=gen, dtype=dtype),
        torch.randn(3, 40_001, generator=gen, dtype=dtype),
        torch.randn(0, 3, dtype=dtype),
        torch.randn((), generator=gen, dtype=dtype),
        torch.randn(1, 9, 1, 1, generator=gen, dtype=dtype),
    ]
    grads = [
        torch.randn(p.shape, generator=gen, dtype=dtype).to(memory_format=_layout(p))
        for p in params
    ]
    assert grads[1].stride() != params[1].stride()  # the size-1 dims' strides differ
    return params, grads


@pytest.fixture
def two_threads(torch_threads):
    """Two torch threads, so that the op's flat index is split between them."""
    torch.set_num_threads(2)


def _layout(p):
    cl = torch.channels_last
    return cl if p.dim() == 4 and p.is_contiguous(memory_format=cl) else torch.contiguous_format


def _state(params, gen):
    """Moments already under way and step counts of their own per tensor."""
    exp_avgs = [
        torch.randn(p.shape, generator=gen, dtype=p.dtype).to(memory_format=_layout(p))
        for p in params
    ]
    # v ≥ m², as Adam's moments keep it, so that every update stays below the rate
    exp_avg_sqs = [
        m * m + torch.rand(p.shape, generator=gen, dtype=p.dtype).to(memory_format=_layout(p))
        for m, p in zip(exp_avgs, params, strict=True)
    ]
    # float32, as torch's Adam keeps them, and one float64
    steps = [
        torch.tensor(float(k + 2), dtype=torch.float64 if k == 1 else torch.float32)
        for k in range(len(params))
    ]
    return exp_avgs, exp_avg_sqs, steps


def _copies(tensors):
    return [t.clone(memory_format=torch.preserve_format) for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_adam_matches_its_reference_over_good_and_bad_steps(gen, dtype, two_threads):
    params, grads = _tensors(gen, dtype)
    exp_avgs, exp_avg_sqs, steps = _state(params, gen)
    fast = [_copies(params), _copies(exp_avgs), _copies(exp_avg_sqs), _copies(steps)]
    slow = [_copies(params), _copies(exp_avgs), _copies(exp_avg_sqs), _copies(steps)]
    lr = torch.tensor(3e-3, dtype=torch.float64)
    tolerance = (
        {"rtol": 1e-13, "atol": 1e-15} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    )
    for i, bad in enumerate([False, True, False, False, True]):
        step_grads = [g * (i + 1) for g in grads]
        if bad:  # a bad step may carry non-finite gradients: they must not leak anywhere
            step_grads[2][4] = float("nan")
            step_grads[0][1, 2, 0, 1] = float("inf")
        found_inf = torch.tensor(float(bad))
        before = [_copies(kind) for kind in fast]
        slow_before = _copies(slow[0])
        p, m, v, s = fast
        ops.masked_adam_(p, step_grads, m, v, s, lr, *BETAS, EPS, found_inf)
        p, m, v, s = slow
        ops_reference.masked_adam_(p, step_grads, m, v, s, lr, *BETAS, EPS, found_inf)
        if bad:  # nothing moved, the step counts included
            for kind, old in zip(fast, before, strict=True):
                assert all(map(torch.equal, kind, old))
        for kind_fast, kind_slow in zip(fast, slow, strict=True):
            for a, b in zip(kind_fast, kind_slow, strict=True):
                torch.testing.assert_close(a, b, **tolerance)
                assert a.stride() == b.stride()
        # the updates themselves, not only where they land: at most a rounding of the params
        # (|θ| < 8 or so) apart, three orders below the rate
        ulp = torch.finfo(dtype).eps * 8
        for a, a0, b, b0 in zip(fast[0], before[0], slow[0], slow_before, strict=True):
            torch.testing.assert_close(a - a0, b - b0, rtol=1e-4, atol=ulp)
    assert [s.item() for s in fast[3]] == [k + 2 + 3 for k in range(len(params))]
    assert all(t._version > 0 for kind in fast for t in kind)  # autograd sees them changed


def test_masked_adam_takes_a_float32_learning_rate_and_an_empty_list(gen):
    params, grads = _tensors(gen, torch.float32)
    exp_avgs, exp_avg_sqs, steps = _state(params, gen)
    p, m, v, s = _copies(params), _copies(exp_avgs), _copies(exp_avg_sqs), _copies(steps)
    lr, ok = torch.tensor(1e-2), torch.tensor(0.0)
    ops.masked_adam_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, *BETAS, EPS, ok)
    ops_reference.masked_adam_(p, grads, m, v, s, lr, *BETAS, EPS, ok)
    for a, b in zip(params, p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    ops.masked_adam_([], [], [], [], [], lr, *BETAS, EPS, ok)  # nothing to do, no error


def test_masked_adam_opcheck(gen):
    params, grads = _tensors(gen, torch.float64)
    exp_avgs, exp_avg_sqs, steps = _state(params, gen)
    lr, ok = torch.tensor(1e-3, dtype=torch.float64), torch.tensor(0.0)
    torch.library.opcheck(
        torch.ops.missingglow.masked_adam_.default,
        [params, grads, exp_avgs, exp_avg_sqs, steps, lr, *BETAS, EPS, ok],
    )


def test_masked_adam_refuses_mismatched_arguments():
    p, lr, ok = [torch.zeros(4)], torch.tensor(1e-3), torch.tensor(0.0)
    m, v, s = [torch.zeros(4)], [torch.zeros(4)], [torch.tensor(0.0)]
    with pytest.raises(RuntimeError, match="lists of one length"):
        ops.masked_adam_(p, [], m, v, s, lr, *BETAS, EPS, ok)
    with pytest.raises(RuntimeError, match="memory layout"):
        ops.masked_adam_(p, [torch.zeros(5)], m, v, s, lr, *BETAS, EPS, ok)
    with pytest.raises(RuntimeError, match="memory layout"):
        ops.masked_adam_(p, [torch.zeros(8)[::2]], m, v, s, lr, *BETAS, EPS, ok)
    # dense, but in another order: a channels-last grad of a contiguous 3×3 weight
    weight, cl = [torch.zeros(4, 3, 3, 3)], torch.channels_last
    moments = [torch.zeros(4, 3, 3, 3)], [torch.zeros(4, 3, 3, 3)]
    with pytest.raises(RuntimeError, match="memory layout"):
        grad = [torch.zeros(4, 3, 3, 3).contiguous(memory_format=cl)]
        ops.masked_adam_(weight, grad, *moments, s, lr, *BETAS, EPS, ok)
    with pytest.raises(RuntimeError, match="one number"):
        ops.masked_adam_(p, [torch.zeros(4)], m, v, s, torch.ones(2), *BETAS, EPS, ok)
    with pytest.raises(RuntimeError, match="float32 or all float64"):
        ops.masked_adam_(
            [torch.zeros(4, dtype=torch.float16)],
            [torch.zeros(4, dtype=torch.float16)],
            m,
            v,
            s,
            lr,
            *BETAS,
            EPS,
            ok,
        )
