"""`missingglow check`: what this installation can do, proven on a small random model.

Reports whether the fused extension loaded (and with which backends), then builds a small Glow,
data-initialises it, and checks that inverse(forward(x)) returns x, in each precision the fused
steps run (fp32, and bf16 for the coupling networks' hidden convolutions), and that the fused ops
the model runs (actnorm_conv, coupling_step, flow_step, their inverses and their backwards) agree
with their pure-PyTorch references, so a user sees at once whether the build is sound.
"""

import time

import torch

from .flow import fused_step, ops, ops_reference
from .flow.model import Glow
from .flow.preprocess import bits_per_dim, dequantize, quantize
from .flow.step_params import PRECISIONS

# bf16's round trip is exact step by step (the network sees the same bits both ways) but a
# rebuilt input can flip a bfloat16 rounding: within one bfloat16 step (2^-8) of the data's scale
ROUND_TRIP_BOUNDS = {"fp32": 2.0**-16, "bf16": 2.0**-8}


def _op_names():
    return [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("missingglow::")]


def _kernel_keys(names):
    """The dispatch keys (of CPU and CUDA) with a kernel for every one of `names`."""
    return [
        k
        for k in ("CPU", "CUDA")
        if all(torch._C._dispatch_has_kernel_for_dispatch_key(n, k) for n in names)
    ]


def extension_status():
    """One line: is _C loaded, and which devices have kernels for every op."""
    if not ops.AVAILABLE:
        return f"fused ops: unavailable, the pure-PyTorch reference runs ({ops.WHY_UNAVAILABLE})"
    names = _op_names()
    keys = _kernel_keys(names)
    gpu = "a GPU is present" if torch.cuda.is_available() else "no GPU"
    return (
        f"fused ops: {len(names)} ops with kernels for {', '.join(keys)} ({gpu}); "
        f"CPU coupling loops: {ops.coupling_simd()}"
    )


def run(image_size=32, seed=0):
    """Yields report lines; raises AssertionError if the model does not invert."""
    yield f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    yield extension_status()
    gen = torch.Generator().manual_seed(seed)
    model = Glow(blocks=3, flows=4, hidden=32, image_size=image_size)
    images = torch.rand(16, 3, image_size, image_size, generator=gen)
    x = dequantize(quantize(images, 5), 5, generator=gen)
    start = time.perf_counter()
    with torch.no_grad():
        log_p = model.log_prob(x)  # the first pass also data-initialises every ActNorm
        back = model.decode(model.encode(x))
    elapsed = time.perf_counter() - start
    error = ((back - x).norm() / x.norm()).item()
    assert error < 1e-4, f"inverse(forward(x)) is off by {error:.2e}"
    bpd = bits_per_dim(log_p, 5, x[0].numel()).mean().item()
    yield (
        f"Glow 3 blocks x 4 flows, hidden 32, {image_size}x{image_size}: inverse(forward(x)) "
        f"relative error {error:.1e}, untrained {bpd:.2f} bits/dim on noise, {elapsed:.2f} s"
    )
    if ops.AVAILABLE:
        errors = round_trip_errors(model, x, gen)
        scale = x.abs().max().item()
        for precision, error in errors.items():
            bound = ROUND_TRIP_BOUNDS[precision] * scale
            assert error < bound, f"{precision}: decode(encode(x)) is off by {error:.2e}"
        yield (
            "round trip max|decode(encode(x)) - x| with the parameters perturbed (a fresh "
            "model's couplings are the identity): "
            + ", ".join(f"{p} {e:.1e}" for p, e in errors.items())
        )
        devices = ["cpu"] + (
            ["cuda"] if torch.cuda.is_available() and "CUDA" in _kernel_keys(_op_names()) else []
        )
        diff = max(fused_ops_difference(device, gen) for device in devices)
        assert diff < 1e-9, f"the fused ops differ from their references by {diff:.2e}"
        yield (
            f"fused ops vs reference (float64, {', '.join(devices)}): actnorm_conv, "
            f"channel_gemm_split, coupling_step, flow_step, inverses and gradients, "
            f"max difference {diff:.1e}"
        )


def round_trip_errors(model, x, gen):
    """{precision: max|decode(encode(x)) − x|} of `model` with every parameter perturbed, as
    training would have moved them, run in each precision."""
    state = {
        name: t + 0.02 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
        if t.is_floating_point() and name in dict(model.named_parameters())
        else t
        for name, t in model.state_dict().items()
    }
    errors = {}
    for precision in PRECISIONS:
        moved = Glow(**{**model.config, "precision": precision})
        moved.load_state_dict(state)
        with torch.no_grad():
            errors[precision] = (moved.decode(moved.encode(x)) - x).abs().max().item()
    return errors


def fused_ops_difference(device, gen):
    """The largest relative difference between the fused ops and their references.

    A flow step with every parameter randomly perturbed (a fresh one is the identity in its
    coupling) runs on channels-last float64 activations, as the fused model calls the ops: one by
    one (ops.actnorm_conv, fused_step.coupling_net, ops.coupling_step), as the training step calls
    them (ops.channel_gemm_split, ActNorm folded into the 1×1 conv, in place of
    ops.actnorm_conv) and as one op (ops.flow_step), forward, inverse, and the gradients of x and
    every parameter, each against its namesake in ops_reference."""
    step = fused_step.FusedFlowStep(12, hidden=16).double()
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    step.to(device)
    loc, scale, weight = step.actnorm.loc, step.actnorm.scale, step.invconv.matrix()
    params = [loc, scale, weight, *fused_step.coupling_net_params(step.coupling)]
    x = torch.randn(4, 12, 8, 8, generator=gen, dtype=torch.float64).to(device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    diffs = []

    def compare(got, want):
        for a, b in zip(got, want, strict=True):
            diffs.append(((a - b).abs().max() / b.abs().max().clamp(min=1)).item())

    def one_by_one(x, loc, scale, weight, *net):
        out = ops.actnorm_conv(x, loc, scale, weight)
        return ops.coupling_step(out, fused_step.coupling_net(out[:, : out.shape[1] // 2], *net))

    def as_trained(x, loc, scale, weight, *net):
        folded = weight * scale.reshape(1, -1)  # W·diag(scale), as step_params folds it
        out, out_a = ops.channel_gemm_split(x, folded.T, folded @ loc.reshape(-1))
        return ops.coupling_step(out, fused_step.coupling_net(out_a, *net))

    y_ref, logdet_ref = ops_reference.flow_step(x, *params)
    out = ops.actnorm_conv(x, loc, scale, weight)
    compare([out], [ops_reference.actnorm_conv(x, loc, scale, weight)])
    h = fused_step.coupling_net(out[:, :6], *params[3:])
    compare([h], [ops_reference.coupling_net(out[:, :6], *params[3:])])
    compare(ops.coupling_step(out, h), ops_reference.coupling_step(out, h))
    compare(ops.coupling_step_inverse(y_ref, h), ops_reference.coupling_step_inverse(y_ref, h))
    compare(
        [ops.actnorm_conv_inverse(out, loc, scale, weight)],
        [ops_reference.actnorm_conv_inverse(out, loc, scale, weight)],
    )
    compare(ops.flow_step_inverse(y_ref, *params), ops_reference.flow_step_inverse(y_ref, *params))
    weights = torch.randn(y_ref.shape, generator=gen, dtype=y_ref.dtype).to(device)

    def grads(y, logdet):
        return torch.autograd.grad((y * weights).sum() + logdet.pow(2).sum(), [x, *params])

    grads_ref = grads(y_ref, logdet_ref)
    for fast in (ops.flow_step, one_by_one, as_trained):
        y, logdet = fast(x, *params)
        compare([y, logdet], [y_ref, logdet_ref])
        compare(grads(y, logdet), grads_ref)
    return max(diffs)
