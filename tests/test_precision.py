"""precision="bf16": the coupling network's two hidden convolutions in bfloat16, everything else
in float32 (flow/fused_step.py), and the flow still inverts.

Why it inverts: the coupling network's output h is a function of the half the coupling passes
through unchanged, so the inverse computes h from the very values the forward did, in the same
kernels, and gets the same bits; only the coupling and the 1×1 conv, both float32, are undone.
That holds exactly for one step. Through a whole model it holds only approximately: the inverse
rebuilds each step's input with float32 rounding, and where a rebuilt value sits on the other side
of a bfloat16 rounding boundary from the forward's, that rounding moves by one bfloat16 step.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from missingglow import Glow
from missingglow.flow import fused_step, ops
from missingglow.flow.step_params import prepare_steps
from missingglow.training.checkpoint import build_model

from helpers import randomize

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason=str(ops.WHY_UNAVAILABLE))

BF16_STEP = 2.0**-8  # bfloat16 rounds to 8 significant bits: one step is 2^-8 of a value


def _model(gen, precision, state=None, **kw):
    """A small float32 Glow, data-initialised and randomly perturbed (a fresh model's couplings
    are the identity, which bfloat16 would not touch), or loaded with `state`."""
    cfg = dict(blocks=3, flows=3, hidden=16, image_size=16)
    cfg.update(kw)
    model = Glow(**cfg, precision=precision)
    if state is not None:
        model.load_state_dict(state)
        return model
    with torch.no_grad():
        model(_images(gen, n=8, size=cfg["image_size"]))
    return randomize(model, gen, scale=0.05)


def _images(gen, n=4, size=16):
    return torch.rand(n, 3, size, size, generator=gen) - 0.5


class _DtypesOfOps(TorchDispatchMode):
    """Records (op name, dtypes of its tensor arguments) of every op dispatched."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor)}
        self.calls.append((func.overloadpacket.__name__, dtypes))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_only_the_two_hidden_convolutions_run_in_bfloat16(gen, precision):
    model = _model(gen, precision)
    x = _images(gen)
    with _DtypesOfOps() as mode:
        model.log_prob(x).sum().backward()
        with torch.no_grad():
            model.decode(model.encode(x))
    bf16 = [name for name, dtypes in mode.calls if torch.bfloat16 in dtypes]
    convolutions = [name for name in bf16 if name.startswith("convolution")]
    steps = sum(len(block.flows) for block in model.blocks)
    if precision == "fp32":
        assert bf16 == []
        return
    # per step: 2 forward + 2 backward, 2 again in encode's forward and 2 in decode's inverse
    assert convolutions.count("convolution") == 6 * steps
    assert convolutions.count("convolution_backward") == 2 * steps
    float_ops = {
        "addmm",
        "coupling_step_forward",
        "coupling_step_inverse",
        "mm",
        "bmm",
        "coupling_step_backward",
        "linalg_inv_ex",
        "exp",
        "log",
    }
    assert not float_ops & set(bf16), float_ops & set(bf16)
    for block in model.blocks:
        params = prepare_steps(list(block.flows), 4, 4)
        for p in params.steps:
            assert p.w1.dtype == p.b1.dtype == p.w2.dtype == p.b2.dtype == torch.bfloat16
            assert p.gemm_weight.dtype == p.w3.dtype == p.border.dtype == torch.float32
        assert params.logdet.dtype == torch.float32


def test_fp32_is_what_a_model_without_the_option_computes(gen):
    model = _model(gen, "fp32")
    plain = Glow(blocks=3, flows=3, hidden=16, image_size=16)
    plain.load_state_dict(model.state_dict())
    x = _images(gen)
    assert torch.equal(model.log_prob(x), plain.log_prob(x))
    grads = [torch.autograd.grad(m.log_prob(x).sum(), list(m.parameters())) for m in (model, plain)]
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_a_bf16_step_inverts_as_exactly_as_the_float32_ops_it_undoes(gen):
    """The network gives the same bits forward and inverse, so a step's round trip is exactly
    the float32 coupling and GEMM undone with that h."""
    step = fused_step.FusedFlowStep(12, 16, precision="bf16")
    step(torch.randn(8, 12, 5, 7, generator=gen))  # ActNorm's data init
    randomize(step, gen, scale=0.2)
    x = fused_step._channels_last(torch.randn(3, 12, 5, 7, generator=gen))
    with torch.no_grad():
        y, _ = step(x)
        forward = prepare_steps([step], 5, 7).steps[0]
        inverse = prepare_steps([step], 5, 7, inverse=True).steps[0]
        out = fused_step.channel_gemm(x, forward.gemm_weight, forward.gemm_bias)
        h = fused_step.prepared_coupling_net(out[:, :6], forward)
        assert torch.equal(fused_step.prepared_coupling_net(y[:, :6], inverse), h)
        by_hand = fused_step.channel_gemm(
            ops.coupling_step_inverse(y, h)[0], inverse.gemm_weight, inverse.gemm_bias
        )
        assert torch.equal(step.reverse(y), by_hand)
        torch.testing.assert_close(step.reverse(y), x, rtol=1e-5, atol=1e-5)


def test_a_bf16_model_inverts_to_within_a_bfloat16_step(gen):
    """Bound: one bfloat16 step (2^-8) of the data's scale, max|x|. Each bfloat16 rounding the
    inverse flips (see the module docstring) moves one hidden value by one bfloat16 step of
    itself, and what reaches x is that change through one zero-conv and one coupling, which at
    these weights shrink it; a round trip with bfloat16 where float32 is kept (the coupling, the
    1×1 conv, the priors) would be off by that much everywhere."""
    x = _images(gen, n=8)
    fp32 = _model(gen, "fp32")
    bf16 = _model(gen, "bf16", state=fp32.state_dict())
    with torch.no_grad():
        error = {
            name: (m.decode(m.encode(x)) - x).abs().max().item()
            for name, m in (("fp32", fp32), ("bf16", bf16))
        }
        raw = (bf16.decode(bf16.encode(x, latent="raw"), latent="raw") - x).abs().max().item()
    bound = BF16_STEP * x.abs().max().item()
    assert error["fp32"] < 1e-5
    assert error["bf16"] < bound and raw < bound, (error, raw, bound)


def test_bf16_trains_like_fp32(gen):
    """log p within a bfloat16 step of fp32's, and the whole gradient (every parameter's, as one
    vector) within two: it carries the rounding of the bfloat16 activations and of the bfloat16
    gradients through the hidden convolutions. One parameter's gradient alone can be further off
    where its terms cancel. Memory-saving training gives the standard bf16 gradient up to the
    roundings the rebuilt inputs flip (the module docstring)."""
    x = _images(gen)
    fp32 = _model(gen, "fp32")
    results = []
    for precision, memory_saving in (("fp32", False), ("bf16", False), ("bf16", True)):
        model = _model(gen, precision, state=fp32.state_dict(), memory_saving=memory_saving)
        log_p = model.log_prob(x)
        grads = torch.autograd.grad(log_p.sum(), list(model.parameters()))
        results.append((log_p.detach(), torch.cat([g.flatten() for g in grads])))
    (log_p32, grad32), (log_p16, grad16), (log_p16_saving, grad16_saving) = results
    torch.testing.assert_close(log_p16, log_p32, rtol=BF16_STEP, atol=0)
    torch.testing.assert_close(log_p16_saving, log_p16, rtol=1e-6, atol=0)
    assert (grad16 - grad32).norm() < 2 * BF16_STEP * grad32.norm()
    assert (grad16_saving - grad16).norm() < BF16_STEP * grad16.norm()


def test_the_config_remembers_precision_and_its_absence_means_fp32(gen):
    model = _model(gen, "bf16")
    assert model.config["precision"] == "bf16"
    rebuilt = build_model(model.config, model.state_dict())
    assert {step.precision for block in rebuilt.blocks for step in block.flows} == {"bf16"}
    older = {k: v for k, v in model.config.items() if k != "precision"}
    loaded = build_model(older, model.state_dict())
    assert loaded.config["precision"] == "fp32"
    assert {step.precision for block in loaded.blocks for step in block.flows} == {"fp32"}


def test_precision_is_refused_where_it_cannot_run(monkeypatch):
    with pytest.raises(ValueError, match="precision"):
        Glow(blocks=2, flows=1, hidden=4, image_size=8, precision="fp16")
    with pytest.raises(ValueError, match="fused"):
        Glow(blocks=2, flows=1, hidden=4, image_size=8, impl="reference", precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        fused_step.FusedFlowStep(4, 4, precision="half")
    monkeypatch.setattr(ops, "AVAILABLE", False)
    monkeypatch.setattr(ops, "WHY_UNAVAILABLE", "missingglow._C could not be loaded (test)")
    with pytest.warns(RuntimeWarning) as record:
        model = Glow(blocks=2, flows=1, hidden=4, image_size=8, precision="bf16")
    assert [
        ("unavailable" in m, "full precision" in m) for m in (str(w.message) for w in record)
    ] == [(True, False), (False, True)]
    assert model.config["impl"] == "reference" and model.config["precision"] == "fp32"


def test_the_self_check_measures_each_precisions_round_trip(gen):
    from missingglow import selfcheck

    model = _model(gen, "fp32")
    x = _images(gen)
    errors = selfcheck.round_trip_errors(model, x, gen)
    assert list(errors) == ["fp32", "bf16"]
    for precision, error in errors.items():
        assert 0 < error < selfcheck.ROUND_TRIP_BOUNDS[precision] * x.abs().max().item()
    assert errors["bf16"] > errors["fp32"]
