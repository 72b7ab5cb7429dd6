"""The fused Glow (flow/fused_step.py) against the reference layers (flow/layers.py), and
memory-saving training (flow/memory_saving.py).

Every comparison is on a model whose parameters are all randomly perturbed (conftest's
`randomize`), so each layer acts on its input; both models share one state dict. float64 to
1e-10; float32 to the tolerances derived in tests/float32_tolerances.py from float32 rounding.
"""

import copy

import pytest
import torch

from missingglow import Glow
from missingglow.flow import fused_step, layers, ops
from missingglow.flow.memory_saving import flows_without_activations

import float32_tolerances as f32
from helpers import randomize

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason=str(ops.WHY_UNAVAILABLE))


def _pair(gen, impls=("reference", "fused"), memory_saving=None, **kw):
    """Models of the given impls sharing one randomised, data-initialised state dict."""
    cfg = dict(blocks=3, flows=2, hidden=8, image_size=16)
    cfg.update(kw)
    memory_saving = memory_saving or (False,) * len(impls)
    models = [
        Glow(**cfg, impl=impl, memory_saving=ms).double()
        for impl, ms in zip(impls, memory_saving, strict=True)
    ]
    with torch.no_grad():
        models[0](_images(gen, n=8, size=cfg["image_size"]))
    randomize(models[0], gen, scale=0.05)
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    return models


def _images(gen, n=3, size=16):
    return (torch.rand(n, 3, size, size, generator=gen) - 0.5).double()


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    log_p = model.log_prob(x)
    (log_p * torch.arange(1.0, x.shape[0] + 1, dtype=x.dtype)).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


def _assert_grads_close(grads, grads_ref, rtol=1e-9):
    assert len(grads) == len(grads_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert g is not None and g_ref is not None
        torch.testing.assert_close(g, g_ref, rtol=rtol, atol=rtol * g_ref.abs().max().item())


def test_default_impl_is_fused():
    model = Glow(blocks=2, flows=1, hidden=4, image_size=8)
    assert model.config["impl"] == "fused" and model.config["memory_saving"] is False
    assert all(isinstance(f, fused_step.FusedFlowStep) for b in model.blocks for f in b.flows)
    model = Glow(blocks=2, flows=1, hidden=4, image_size=8, impl="reference")
    assert not any(isinstance(f, fused_step.FusedFlowStep) for b in model.blocks for f in b.flows)
    with pytest.raises(ValueError, match="impl"):
        Glow(blocks=2, flows=1, hidden=4, image_size=8, impl="fast")


def test_without_extension_the_reference_runs_with_one_warning(monkeypatch):
    monkeypatch.setattr(ops, "AVAILABLE", False)
    monkeypatch.setattr(ops, "WHY_UNAVAILABLE", "missingglow._C could not be loaded (test)")
    with pytest.warns(RuntimeWarning, match="reference.*could not be loaded") as record:
        model = Glow(blocks=2, flows=1, hidden=4, image_size=8)
    assert len(record) == 1
    assert model.config["impl"] == "reference"
    assert not any(isinstance(f, fused_step.FusedFlowStep) for b in model.blocks for f in b.flows)


@pytest.mark.parametrize("affine,lu", [(True, True), (True, False), (False, True)])
def test_fused_glow_matches_reference(gen, affine, lu):
    ref, fast = _pair(gen, affine=affine, lu=lu)
    x = _images(gen)
    with torch.no_grad():
        enc, enc_ref = fast(x), ref(x)
        torch.testing.assert_close(
            enc.log_p + enc.logdet, enc_ref.log_p + enc_ref.logdet, rtol=1e-10, atol=1e-10
        )
        for z, z_ref in zip(enc.z + enc.eps, enc_ref.z + enc_ref.eps, strict=True):
            torch.testing.assert_close(z, z_ref, rtol=1e-10, atol=1e-10)
        eps = 0.8 * ref.encode(_images(gen, n=2))  # a latent the randomised flow inverts finitely
        torch.testing.assert_close(fast.decode(eps), ref.decode(eps), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fast.decode(fast.encode(x)), x, rtol=0, atol=1e-10)
    _assert_grads_close(_grads(fast, x), _grads(ref, x))


@pytest.mark.parametrize("affine,lu", [(True, True), (True, False), (False, True)])
@pytest.mark.usefixtures("float32_proper")
def test_fused_glow_float32_is_as_accurate_as_the_reference(gen, affine, lu):
    """log p(x), the latents, Φ⁻¹ and ∂log p/∂x of the float32 fused Glow against the float64
    reference with the same float32 parameters, next to the float32 reference's own errors.

    f32.assert_float32_close, its floor f32.rounding_floor's (a model has no
    absolute-value `size`): c = 4 for the forward and inverse (the same formulas in another
    order), 8 for the gradient (the fused backward works from the outputs with other formulas,
    see test_flow_step_op.py, which checks every parameter's gradient step by step). log p also
    sums the D = 3·8² per-dimension terms in the kernels' own order: its floor is at least
    U·√D·|log p|, three standard deviations of a sequential sum's rounding
    (f32.coupling_logdet_sd: U·√n·|sum|/3)."""
    cfg = dict(blocks=2, flows=2, hidden=7, image_size=8, affine=affine, lu=lu)
    ref = _pair(gen, impls=("reference",), **cfg)[0]
    state = {k: v.float() if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)  # float64 of the float32 values
    models = [Glow(**cfg, impl=impl) for impl in ("fused", "reference")]
    for m in models:
        m.load_state_dict(state)
    x = _images(gen, size=8).float()
    eps_in = (0.8 * ref.encode(_images(gen, n=2, size=8))).float()  # a latent inverted finitely

    def outputs(model, x, eps_in):
        """log p, the latents, Φ⁻¹(eps_in), and the gradient of Σ (1..N)·log p by x."""
        x = x.detach().requires_grad_()
        enc = model(x)
        log_p = enc.log_p + enc.logdet
        (grad,) = torch.autograd.grad((log_p * torch.arange(1.0, 4, dtype=x.dtype)).sum(), x)
        with torch.no_grad():
            decoded = model.decode(eps_in)
        latents = torch.cat([t.flatten(1) for t in enc.z + enc.eps], 1)
        return [log_p.detach(), latents.detach(), decoded, grad]

    def moved(x, eps_in, *params):  # the float64 reference on the inputs given
        model = copy.deepcopy(ref)
        with torch.no_grad():
            for p, value in zip(model.parameters(), params, strict=True):
                p.copy_(value)
        return outputs(model, x, eps_in)

    fast, ref32 = (outputs(m, x, eps_in) for m in models)
    exact = outputs(ref, x.double(), eps_in.double())
    inputs = [x.double(), eps_in.double(), *[p.detach() for p in ref.parameters()]]
    floors = f32.rounding_floor(moved, inputs, exact, gen, draws=2)
    floors[0] = max(floors[0], f32.U * (3 * 8 * 8) ** 0.5 * exact[0].abs().max().item())
    for name, c, a, r, e, floor in zip(
        ["log p", "latents", "decoded", "grad x"],
        [4, 4, 4, 8],
        fast,
        ref32,
        exact,
        floors,
        strict=True,
    ):
        assert a.dtype == torch.float32, name
        f32.assert_float32_close(a, r, e, c=c, what=name, floor=floor)


def test_fused_step_matches_reference_step_on_odd_shapes(gen):
    for n, c, size in [(1, 6, 1), (3, 12, 5), (3, 48, 3)]:
        step_ref = layers.FlowStep(c, hidden=7).double()
        step = fused_step.FusedFlowStep(c, hidden=7).double()
        step_ref(torch.randn(4, c, size, size, generator=gen, dtype=torch.float64))  # data init
        randomize(step_ref, gen, scale=0.1)
        step.load_state_dict(step_ref.state_dict())
        x = torch.randn(n, c, size, size, generator=gen, dtype=torch.float64)
        y, logdet = step(x)
        y_ref, logdet_ref = step_ref(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(logdet, logdet_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(step.reverse(y_ref), x, rtol=1e-10, atol=1e-10)


def test_fused_step_initialises_actnorm_from_its_first_batch(gen):
    step_ref = layers.FlowStep(6, hidden=5).double()
    step = fused_step.FusedFlowStep(6, hidden=5).double()
    step.load_state_dict(step_ref.state_dict())
    x = 2 + 3 * torch.randn(4, 6, 5, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(step(x)[0], step_ref(x)[0], rtol=1e-10, atol=1e-10)
    assert step.actnorm.initialized.item() == 1
    torch.testing.assert_close(step.actnorm.loc, step_ref.actnorm.loc)
    # loading an uninitialised state dict makes it initialise again on the next batch
    fresh = layers.FlowStep(6, hidden=5).double().state_dict()
    step.load_state_dict(fresh)
    step(x + 1)
    torch.testing.assert_close(step.actnorm.loc, step_ref.actnorm.loc - 1)


def test_checkpoints_move_between_impls(gen):
    ref, fast = _pair(gen)
    assert list(ref.state_dict()) == list(fast.state_dict())


@pytest.mark.parametrize(
    "impl,affine,lu",
    [
        ("fused", True, True),
        ("fused", False, False),
        ("fused", True, False),
        ("reference", True, True),
    ],
)
def test_memory_saving_gradients_equal_standard_ones(gen, impl, affine, lu):
    standard, saving = _pair(
        gen, impls=(impl, impl), memory_saving=(False, True), affine=affine, lu=lu
    )
    x = _images(gen)
    with torch.no_grad():
        torch.testing.assert_close(saving.log_prob(x), standard.log_prob(x), rtol=1e-12, atol=1e-12)
    _assert_grads_close(_grads(saving, x), _grads(standard, x))


def test_memory_saving_keeps_no_activations_inside_the_flow(gen):
    """Bytes saved for the backward (distinct storages) fall to the blocks' outputs and priors."""
    standard, saving = _pair(gen, memory_saving=(False, True), flows=4)
    x = _images(gen, n=4)
    saved = {}
    for name, model in (("standard", standard), ("saving", saving)):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.log_prob(x).sum()
        saved[name] = sum(storages.values())
    assert saved["saving"] < saved["standard"] / 4, saved


@pytest.mark.parametrize(
    "impl,affine,lu",
    [
        ("fused", True, True),
        ("fused", False, False),
        ("reference", True, True),
        ("reference", False, False),
    ],
)
def test_memory_saving_gives_only_the_gradients_asked_for(gen, impl, affine, lu):
    """Frozen parameters (as completion/invert.py freezes them): ∂log p/∂x as without memory saving.
    An input that needs no gradient (an image batch): the parameters' gradients exactly as when
    it needs one, and the flow's backward returns None for it."""
    standard, saving = _pair(
        gen, impls=(impl, impl), memory_saving=(False, True), affine=affine, lu=lu
    )
    x = _images(gen)
    for model in (standard, saving):
        model.requires_grad_(False)
    grad_x, grad_x_ref = (_grad_x(m, x) for m in (saving, standard))
    torch.testing.assert_close(grad_x, grad_x_ref, rtol=1e-9, atol=1e-9 * grad_x_ref.abs().max())
    saving.requires_grad_(True)
    params = list(saving.parameters())
    with_x = torch.autograd.grad(saving.log_prob(x.clone().requires_grad_()).sum(), params)
    without_x = torch.autograd.grad(saving.log_prob(x).sum(), params)
    for g, g_ref in zip(without_x, with_x, strict=True):
        assert torch.equal(g, g_ref)
    flows = saving.blocks[0].flows
    y, logdet = flows_without_activations(
        flows, torch.randn(2, 12, 8, 8, generator=gen, dtype=torch.float64)
    )
    with torch.no_grad():
        returned = y.grad_fn.apply(torch.ones_like(y), torch.ones_like(logdet))
    assert returned[0] is None and returned[1] is None  # x, and the list of flows
    assert all(g is not None for g in returned[2:])


def _grad_x(model, x):
    x = x.clone().requires_grad_()
    return torch.autograd.grad(model.log_prob(x).sum(), x)[0]
