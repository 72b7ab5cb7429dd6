"""The whole flow step as one op (csrc/flow_step.cpp, ops.flow_step) against layers.FlowStep.

Fresh random inputs with odd shapes, every parameter randomly perturbed (conftest's `randomize`)
so that each piece of the step acts on its input; float64 to 1e-9, float32 to the tolerances
derived in tests/float32_tolerances.py from float32 rounding.
"""

import pytest
import torch

from missingglow.flow import fused_step, layers, ops, ops_reference

from float32_tolerances import assert_float32_close, assert_logdet_close, rms, rounding_floor
from helpers import randomize

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason=str(ops.WHY_UNAVAILABLE))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = [(1, 6, 1, 1), (3, 12, 5, 7), (3, 48, 3, 3), (1, 6, 32, 32), (3, 12, 32, 32), (3, 6, 1, 5)]


def _steps(gen, c, hidden=7, device="cpu"):
    """A randomised, data-initialised reference step and a fused step with its state dict."""
    ref = layers.FlowStep(c, hidden).double()
    ref(torch.randn(4, c, 4, 4, generator=gen, dtype=torch.float64))  # ActNorm's data init
    randomize(ref, gen, scale=0.1)
    step = fused_step.FusedFlowStep(c, hidden).double()
    step.load_state_dict(ref.state_dict())
    return ref.to(device), step.to(device)


def _op_args(step):
    """The op's parameters (loc, scale, W, w1, b1, w2, b2, w3, b3, s3) of a fused step."""
    return [
        step.actnorm.loc,
        step.actnorm.scale,
        step.invconv.matrix(),
        *fused_step.coupling_net_params(step.coupling),
    ]


def _x(gen, shape, device, channels_last=False):
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_flow_step_op_matches_reference(gen, device, shape, channels_last):
    ref, step = _steps(gen, shape[1], device=device)
    x = _x(gen, shape, device, channels_last)
    with torch.no_grad():
        out, _ = ref.actnorm(x)
        out, _ = ref.invconv(out)
        y_ref, logdet_ref = ref.coupling(out)  # the op's logdet is the coupling's
        y, logdet = ops.flow_step(x, *_op_args(step))
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(logdet, logdet_ref, rtol=1e-10, atol=1e-10)
        y_fn, logdet_fn = ops_reference.flow_step(x, *_op_args(step))
        torch.testing.assert_close(y_fn, y_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(logdet_fn, logdet_ref, rtol=1e-12, atol=1e-12)
        back, inv_logdet = ops.flow_step_inverse(y, *_op_args(step))
        torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-10, atol=1e-10)
        back_fn, inv_logdet_fn = ops_reference.flow_step_inverse(y, *_op_args(step))
        torch.testing.assert_close(back, back_fn, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(inv_logdet, inv_logdet_fn, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(
            ops.flow_step_inverse(y_ref, *_op_args(step))[0],
            ref.reverse(y_ref),
            rtol=1e-9,
            atol=1e-9,
        )


def assert_step_logdet_close(fast, ref32, exact, log_s, c=4.0, what="logdet", floor=0.0):
    """Per sample |fast − exact| ≤ c·max(rms(ref32 − exact), floor) + 6·coupling_logdet_sd(log_s).

    A step's logdet carries two float32 errors: the rounding of everything before the sum (the
    network's, which reaches it through log_s; ActNorm's and the 1×1 conv's own logdets), the same
    in any correct evaluation (so within c of the float32 reference's, as in assert_float32_close,
    with rounding_floor's floor), and the rounding of the per-term logs and of their sum, which
    depends on the order of the sum and is bounded by coupling_logdet_sd (both in
    float32_tolerances.py)."""
    before = c * max(rms(ref32.double() - exact), floor)
    assert_logdet_close(fast, exact, log_s, what, slack=before)


FLOAT32_SHAPES = [(1, 6, 1, 1), (3, 12, 5, 7), (3, 48, 3, 3), (3, 6, 1, 5), (2, 12, 16, 16)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", FLOAT32_SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.usefixtures("float32_proper")
def test_flow_step_op_float32_is_as_accurate_as_the_reference(gen, device, shape, channels_last):
    _, step = _steps(gen, shape[1], device=device)
    args = [p.detach().float() for p in _op_args(step)]
    wide = [p.double() for p in args]
    x = _x(gen, shape, device, channels_last).float()
    with torch.no_grad():
        y, logdet = ops.flow_step(x, *args)
        y32, logdet32 = ops_reference.flow_step(x, *args)
        y64, logdet64 = ops_reference.flow_step(x.double(), *wide)
        floors = rounding_floor(ops_reference.flow_step, [x.double(), *wide], (y64, logdet64), gen)
        out = ops_reference.actnorm_conv(x.double(), *wide[:3])
        log_s = ops_reference.coupling_net(out[:, : shape[1] // 2], *wide[3:]).chunk(2, 1)[0]
        assert y.dtype == logdet.dtype == torch.float32
        assert_float32_close(y, y32, y64, what="y", floor=floors[0])
        assert_step_logdet_close(logdet, logdet32, logdet64, log_s, floor=floors[1])
        # the inverse, from the float32 reference's output
        back, inv_logdet = ops.flow_step_inverse(y32, *args)
        back32, inv_logdet32 = ops_reference.flow_step_inverse(y32, *args)
        back64, inv_logdet64 = ops_reference.flow_step_inverse(y32.double(), *wide)
        floors = rounding_floor(
            ops_reference.flow_step_inverse, [y32.double(), *wide], (back64, inv_logdet64), gen
        )
        assert_float32_close(back, back32, back64, what="x back", floor=floors[0])
        assert_step_logdet_close(
            inv_logdet, inv_logdet32, inv_logdet64, log_s, what="inverse logdet", floor=floors[1]
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("driver", [True, False])
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (3, 12, 5, 7), (3, 48, 3, 3)])
@pytest.mark.usefixtures("float32_proper")
def test_fused_step_float32_gradients_are_as_accurate_as_the_reference(
    gen, device, driver, shape, monkeypatch
):
    """Through the module in float32, both ways of running it, against the reference module in
    float32 and in float64 (the same float32 parameters and input).

    The floor of assert_float32_close is rounding_floor's (a step's gradients have no `size`),
    and c = 8 for the gradients: the fused backward evaluates other formulas than autograd's
    (from the output y, not from x: grad log_s = (grad_y·y + grad_logdet)·(1 − s)), whose
    roundings have other sensitivities, up to a factor 2 more than the single ops' tests allow."""
    monkeypatch.setattr(fused_step.FusedFlowStep, "driver", driver)
    ref, step = _steps(gen, shape[1], device=device)
    step.float()
    ref32 = layers.FlowStep(shape[1], 7).to(device)
    ref32.load_state_dict(step.state_dict())
    ref.load_state_dict(step.state_dict())  # float64 again, of the float32 values
    x = _x(gen, shape, device).float()
    weights = torch.randn(shape, generator=gen).to(device)
    names = [name for name, _ in ref.named_parameters()]

    def outputs(module, x, *params):
        """y, logdet and the gradients of Σ weights·y + Σ logdet² (x and every parameter)."""
        x = x.detach().requires_grad_()
        params = [p.detach().requires_grad_() for p in params or module.parameters()]
        y, logdet = torch.func.functional_call(module, dict(zip(names, params, strict=True)), (x,))
        loss = (y * weights.to(x.dtype)).sum() + logdet.pow(2).sum()
        return [y.detach(), logdet.detach(), *torch.autograd.grad(loss, [x, *params])]

    fast, ref32, exact = outputs(step, x), outputs(ref32, x), outputs(ref, x.double())
    floors = rounding_floor(
        lambda *a: outputs(ref, *a),
        [x.double(), *[p.detach() for p in ref.parameters()]],
        exact,
        gen,
    )
    with torch.no_grad():
        out = ref.invconv(ref.actnorm(x.double())[0])[0]
        log_s = ref.coupling.net(out.chunk(2, 1)[0]).chunk(2, 1)[0]
    assert_step_logdet_close(fast[1], ref32[1], exact[1], log_s, floor=floors[1])
    for name, a, r, e, floor in zip(
        ["y", "logdet", "x", *names], fast, ref32, exact, floors, strict=True
    ):
        assert a.dtype == torch.float32, name
        if name != "logdet":
            c = 4.0 if name == "y" else 8.0
            assert_float32_close(
                a, r, e, c=c, what=name if name == "y" else f"grad {name}", floor=floor
            )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("driver", [True, False])
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (3, 12, 5, 7), (3, 48, 3, 3), (3, 12, 32, 32)])
def test_fused_step_gradients_match_reference(gen, device, driver, shape, monkeypatch):
    """Through the module, both ways of running it: the LU parameters, ActNorm, the network."""
    monkeypatch.setattr(fused_step.FusedFlowStep, "driver", driver)
    ref, step = _steps(gen, shape[1], device=device)
    x = _x(gen, shape, device).requires_grad_()
    y, logdet = step(x)
    y_ref, logdet_ref = ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(step.reverse(y_ref), x.detach(), rtol=1e-9, atol=1e-9)
    weights = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(device)
    names = [name for name, _ in ref.named_parameters()]
    grads = torch.autograd.grad((y * weights).sum() + logdet.pow(2).sum(), [x, *step.parameters()])
    grads_ref = torch.autograd.grad(
        (y_ref * weights).sum() + logdet_ref.pow(2).sum(), [x, *ref.parameters()]
    )
    for name, g, g_ref in zip(["x"] + names, grads, grads_ref, strict=True):
        torch.testing.assert_close(
            g,
            g_ref,
            rtol=1e-9,
            atol=1e-9 * (1 + g_ref.abs().max().item()),
            msg=lambda m: f"{name}: {m}",
        )


def test_the_driver_is_off_by_default_on_every_device(gen):
    assert fused_step.FusedFlowStep.driver is False
    _, step = _steps(gen, 6)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # no GPU needed to ask
    assert not step.uses_driver(cpu) and not step.uses_driver(cuda)
    step.driver = True
    assert step.uses_driver(cpu) and step.uses_driver(cuda)
    step.driver = None  # the class's setting
    assert not step.uses_driver(cuda)
    _, additive = _steps(gen, 6)
    additive.coupling.affine, additive.driver = False, True
    assert not additive.uses_driver(cpu)  # the driver is for affine steps only


def test_a_cpu_step_calls_the_driver_when_asked(gen, monkeypatch):
    _, step = _steps(gen, 6)
    calls = []
    real = ops.flow_step
    monkeypatch.setattr(ops, "flow_step", lambda *a: calls.append(1) or real(*a))
    step(torch.randn(2, 6, 4, 4, generator=gen, dtype=torch.float64))
    assert calls == []
    step.driver = True
    step(torch.randn(2, 6, 4, 4, generator=gen, dtype=torch.float64))
    assert calls == [1]


def _small_args(gen, device, n=2, c=4, size=3, hidden=3):
    _, step = _steps(gen, c, hidden, device)
    x = _x(gen, (n, c, size, size), device, channels_last=True)
    return [x, *[p.detach() for p in _op_args(step)]]


@pytest.mark.parametrize("device", DEVICES)
def test_flow_step_op_gradcheck(gen, device):
    args = [a.requires_grad_() for a in _small_args(gen, device)]
    # cuDNN's default float64 weight-gradient algorithm sums with atomics, in a different order on
    # each run; gradcheck asks for bit-identical repeats, so it gets cuDNN's deterministic ones
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, benchmark=False):
        assert torch.autograd.gradcheck(ops.flow_step, args)
        y = ops.flow_step(*args)[0].detach().requires_grad_()
        assert torch.autograd.gradcheck(ops.flow_step_inverse, [y, *args[1:]], fast_mode=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_flow_step_opcheck(gen, device, channels_last):
    x, *params = _small_args(gen, device, n=3, c=6, size=5)
    if not channels_last:
        x = x.contiguous()
    for op in (
        torch.ops.missingglow.flow_step_forward.default,
        torch.ops.missingglow.flow_step_inverse.default,
    ):
        torch.library.opcheck(
            op, [x.detach().requires_grad_(), *[p.detach().requires_grad_() for p in params]]
        )
    y, logdet, h1, h2, h = torch.ops.missingglow.flow_step_forward.default(x, *params)
    torch.library.opcheck(
        torch.ops.missingglow.flow_step_backward.default,
        [torch.randn_like(y), torch.randn_like(logdet), x, y, h1, h2, h, *params],
    )


def test_compiled_driver_step_matches_eager_without_graph_breaks(gen, monkeypatch):
    monkeypatch.setattr(fused_step.FusedFlowStep, "driver", True)
    torch._dynamo.reset()
    _, step = _steps(gen, 12, hidden=5)
    x = torch.randn(3, 12, 6, 6, generator=gen, dtype=torch.float64)

    def loss(x):
        y, logdet = step(x)
        return (y * y).sum() + logdet.sum()

    eager = loss(x)
    grads = torch.autograd.grad(eager, list(step.parameters()))
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, eager, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(torch.autograd.grad(out, list(step.parameters())), grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_flow_step_op_refuses_bad_arguments(gen):
    x, *params = _small_args(gen, "cpu")
    with pytest.raises(RuntimeError, match="even"):
        ops.flow_step(torch.zeros(2, 3, 3, 3, dtype=x.dtype), *params)
    with pytest.raises(RuntimeError, match="w1 must be"):
        ops.flow_step(torch.zeros(2, 6, 3, 3, dtype=x.dtype), *params)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.flow_step(x.float(), *params)
    with pytest.raises(RuntimeError, match="N, C, H, W"):
        ops.flow_step(x[0], *params)
