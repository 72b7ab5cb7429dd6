"""The fast ops: thin wrappers over the compiled ops in missingglow._C (torch.ops.missingglow.*).

This is the only module that touches the extension. Each op has a fake kernel, so torch.compile
can trace it, which refuses through torch._check what the C++ op refuses (csrc/flow.h,
csrc/actnorm_conv.cpp, csrc/channel_gemm.cpp, csrc/flow_step.cpp), and an autograd formula that
returns no gradient for an input that needs none: registered here, or in C++ for the two ops the
training step calls once per flow step (channel_gemm_split, coupling_step), where a formula in
Python would cost more host time than the op itself at small shapes. Each function here has a
pure-PyTorch reference of the same name and signature in ops_reference.py. Without the compiled
extension, `AVAILABLE` is False, `WHY_UNAVAILABLE` says why, and the model falls back to the
reference layers with one warning.
"""

import torch

try:
    from .. import _C  # noqa: F401  (loading it registers the ops)

    AVAILABLE, WHY_UNAVAILABLE = True, None
except ImportError as err:  # not built, or built against another torch
    AVAILABLE, WHY_UNAVAILABLE = False, f"missingglow._C could not be loaded ({err})"


# --- ActNorm + invertible 1×1 conv ---------------------------------------------------------------


def actnorm_conv(x, loc, scale, weight):
    """y = W·(scale ⊙ (x + loc)) over channels: one GEMM, W·diag(scale) and its bias folded in.

    loc and scale hold one number per channel (any shape, e.g. ActNorm's (1, C, 1, 1)); weight is
    (C, C) or (C, C, 1, 1). A channels-last x gives a channels-last y; other layouts give a
    contiguous y. Gradients flow to all four arguments.
    """
    return torch.ops.missingglow.actnorm_conv_forward.default(x, loc, scale, weight)


def actnorm_conv_inverse(y, loc, scale, weight):
    """x = scale⁻¹ ⊙ (W⁻¹·y) − loc, the inverse of `actnorm_conv`."""
    return torch.ops.missingglow.actnorm_conv_inverse.default(y, loc, scale, weight)


def actnorm_conv_backward(grad_y, x, loc, scale, weight):
    """(grad_x, grad_loc, grad_scale, grad_weight) of Σ grad_y·actnorm_conv(x, loc, scale, weight),
    all four in one pass; grad_x keeps x's layout."""
    return torch.ops.missingglow.actnorm_conv_backward.default(grad_y, x, loc, scale, weight)


def channel_gemm_split(x, weight, bias):
    """(out, out_a): out = x·weight + bias over the channels of (N, C, H, W) x, channels-last,
    and out_a its first C/2 channels copied dense and channels-last, the coupling network's
    input. ActNorm and the 1×1 conv as one GEMM, weight and bias folded once per block
    (step_params.py); the backward adds out_a's gradient into out's once."""
    return torch.ops.missingglow.channel_gemm_split_forward.default(x, weight, bias)


def channel_gemm_split_backward(grad_out, grad_half, x, weight):
    """(grad_x, grad_weight, grad_bias) of Σ grad_out·out + Σ grad_half·out_a."""
    return torch.ops.missingglow.channel_gemm_split_backward.default(grad_out, grad_half, x, weight)


# --- the affine coupling -------------------------------------------------------------------------


def coupling_step(x, h):
    """(y, logdet) of the affine coupling on whole tensors.

    x = [x_a, x_b] and the coupling network's output h = [log_s, t] (halves along channels) give
    y = [x_a, (x_b + t)·sigmoid(log_s + 2)] and logdet = Σ log sigmoid(log_s + 2) per sample, in
    one pass with no chunk or cat copies; y keeps x's layout (see `actnorm_conv`).
    """
    return torch.ops.missingglow.coupling_step_forward.default(x, h)


def coupling_step_inverse(y, h):
    """(x, logdet): x = [y_a, y_b / sigmoid(log_s + 2) − t], logdet = −Σ log sigmoid(log_s + 2)."""
    return torch.ops.missingglow.coupling_step_inverse.default(y, h)


def coupling_step_backward(grad_y, grad_logdet, y, h):
    """(grad_x, grad_h) of Σ grad_y·y + Σ grad_logdet·logdet for (y, logdet) = coupling_step(x, h),
    from the output y: neither the standard nor the memory-saving backward needs x."""
    return torch.ops.missingglow.coupling_step_backward.default(grad_y, grad_logdet, y, h)


# --- a whole flow step ---------------------------------------------------------------------------


def flow_step(x, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3):
    """(y, logdet) of a whole affine flow step in one op (csrc/flow_step.cpp).

    ActNorm (loc, scale) and the 1×1 conv (weight, a (C, C) matrix) as `actnorm_conv`, the
    coupling network conv3x3(w1, b1) → ReLU → conv1x1(w2, b2) → ReLU → ZeroConv2d(w3, b3, s3) on
    the first half, and `coupling_step`. logdet is the coupling's alone: the caller adds
    ActNorm's and the 1×1 conv's. y is channels-last; gradients flow to x and all ten parameters.
    """
    y, logdet, _, _, _ = torch.ops.missingglow.flow_step_forward.default(
        x, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3
    )
    return y, logdet


def flow_step_inverse(y, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3):
    """(x, logdet): the inverse of `flow_step`, logdet = minus the coupling's logdet."""
    return torch.ops.missingglow.flow_step_inverse.default(
        y, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3
    )


# --- the optimiser's update ----------------------------------------------------------------------


def masked_adam_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, found_inf):
    """Adam's update of float32 or float64 CPU tensors in place, in one op (csrc/masked_adam.cpp),
    or nothing when found_inf (0 or 1) is 1; `lr`, `found_inf` and each of `steps` are one-number
    tensors the op reads itself, so the host reads no value. Each grad and moment lies in memory
    as its param does. The tensors' version counters move as an in-place op's would, so autograd
    still refuses a backward through values the step has changed."""
    torch.ops.missingglow.masked_adam_.default(
        params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, found_inf
    )
    torch.autograd.graph.increment_version([*params, *exp_avgs, *exp_avg_sqs, *steps])


def coupling_simd(name=None):
    """The build of the CPU coupling loops in use ("avx512", "avx2" or "portable"), after
    switching to `name` first if given ("best": the widest this CPU runs); ValueError where that
    build cannot run here."""
    return _C.coupling_simd() if name is None else _C.coupling_simd(name)


# --- what the C++ ops refuse, for the fake kernels -----------------------------------------------
# Each check is one torch._check per condition, so that a symbolic size under torch.compile
# becomes a guard or a runtime assertion rather than a Python bool.


def _check_shape(t, shape, op, message):
    torch._check(t.dim() == len(shape), lambda: f"{op}: {message}")
    # a rank mismatch is refused by the check above (under tracing it may only be recorded)
    for size, wanted in zip(t.shape, shape, strict=False):
        torch._check(size == wanted, lambda: f"{op}: {message}")


def _check_like(x, others, names, op):
    """Every tensor of `others` has x's dtype and device; x is floating-point."""
    for t in others:
        torch._check(t.dtype == x.dtype, lambda: f"{op}: {names} must have one dtype")
        torch._check(t.device == x.device, lambda: f"{op}: {names} must be on one device")
    torch._check(x.dtype.is_floating_point, lambda: f"{op}: expected floating-point tensors")


def _check_channel_gemm_args(x, weight, op):
    """csrc/channel_gemm.cpp, check_channel_gemm_args: x and the folded weight."""
    torch._check(x.dim() == 4, lambda: f"{op}: expected (N, C, H, W) activations")
    c = x.shape[1]
    torch._check(c % 2 == 0, lambda: f"{op}: the channel count must be even, got {c}")
    _check_shape(weight, (c, c), op, f"weight must be (C, C) with C = {c}")
    _check_like(x, (weight,), "x, weight and bias", op)


def _check_actnorm_conv_args(x, loc, scale, weight, op):
    """csrc/actnorm_conv.cpp, check_actnorm_conv_args."""
    torch._check(
        x.dim() >= 2, lambda: f"{op}: expected (N, C, ...) activations, got {x.dim()} dims"
    )
    c = x.shape[1]
    torch._check(
        loc.numel() == c,
        lambda: (
            f"{op}: loc and scale need {c} entries (one per "
            f"channel), got {loc.numel()} and {scale.numel()}"
        ),
    )
    torch._check(
        scale.numel() == c,
        lambda: (
            f"{op}: loc and scale need {c} entries (one per "
            f"channel), got {loc.numel()} and {scale.numel()}"
        ),
    )
    torch._check(
        weight.dim() >= 2,
        lambda: (
            f"{op}: weight must be (C, C) or (C, C, 1, 1) with C = {c}, got {tuple(weight.shape)}"
        ),
    )
    for ok in (weight.numel() == c * c, weight.shape[0] == c, weight.shape[1] == c):
        torch._check(
            ok,
            lambda: (
                f"{op}: weight must be (C, C) or (C, C, 1, 1) with C = {c}, "
                f"got {tuple(weight.shape)}"
            ),
        )
    _check_like(x, (loc, scale, weight), "x, loc, scale and weight", op)


def _check_coupling_step_args(x, h, op):
    """csrc/flow.h, check_coupling_step_args."""
    torch._check(
        x.dim() >= 2, lambda: f"{op}: expected (N, C, ...) activations, got {x.dim()} dims"
    )
    torch._check(
        x.shape[1] % 2 == 0, lambda: f"{op}: the channel count must be even, got {x.shape[1]}"
    )
    _check_shape(
        h,
        x.shape,
        op,
        "x and the network output h must have one shape, got "
        f"{tuple(x.shape)} and {tuple(h.shape)}",
    )
    _check_like(x, (h,), "x and h", op)


def _check_backward_grads(grad_y, grad_logdet, like, op, like_name):
    """csrc/flow.h, check_backward_grads."""
    _check_shape(grad_y, like.shape, op, f"grad_y must match {like_name}'s shape")
    torch._check(
        grad_logdet.dim() == 1, lambda: f"{op}: grad_logdet must have one entry per sample"
    )
    torch._check(
        grad_logdet.shape[0] == like.shape[0],
        lambda: f"{op}: grad_logdet must have one entry per sample",
    )


def _check_flow_step_args(x, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3, op):
    """csrc/flow_step.cpp, check_flow_step_args, and the actnorm_conv op it calls."""
    torch._check(
        x.dim() == 4, lambda: f"{op}: expected (N, C, H, W) activations, got {x.dim()} dims"
    )
    c = x.shape[1]
    torch._check(c % 2 == 0, lambda: f"{op}: the channel count must be even, got {c}")
    hidden = w1.shape[0] if w1.dim() else 0
    _check_shape(
        w1,
        (hidden, c // 2, 3, 3),
        op,
        f"w1 must be (hidden, C/2, 3, 3) with C = {c}, got {tuple(w1.shape)}",
    )
    _check_shape(
        w2,
        (hidden, hidden, 1, 1),
        op,
        f"w2 must be ({hidden}, {hidden}, 1, 1), got {tuple(w2.shape)}",
    )
    _check_shape(
        w3, (c, hidden, 3, 3), op, f"w3 must be ({c}, {hidden}, 3, 3), got {tuple(w3.shape)}"
    )
    for b, want in ((b1, hidden), (b2, hidden), (b3, c), (s3, c)):
        torch._check(
            b.numel() == want, lambda: f"{op}: b1 and b2 need {hidden} entries, b3 and s3 need {c}"
        )
    _check_like(x, (loc, scale, weight, w1, b1, w2, b2, w3, b3, s3), "x and every parameter", op)
    _check_actnorm_conv_args(x, loc, scale, weight, op)


def _grads_wanted(ctx, grads):
    """The gradients of the inputs that need one, None for the others."""
    return tuple(
        g if wanted else None for g, wanted in zip(grads, ctx.needs_input_grad, strict=True)
    )


def _zeros_for_none(grad_y, grad_logdet, y):
    """Autograd passes None for an output nobody used; the backward ops take zeros."""
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y
    grad_logdet = y.new_zeros(y.shape[:1]) if grad_logdet is None else grad_logdet
    return grad_y, grad_logdet


if AVAILABLE:

    def _per_sample(x):
        return x.new_empty(x.shape[:1])

    def _layout(x):
        """The layout the C++ ops return (csrc/flow.h, layout_is_channels_last)."""
        channels_last = (
            x.dim() == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        )
        return torch.channels_last if channels_last else torch.contiguous_format

    # --- ActNorm + 1×1 conv ---------------------------------------------------------------------

    @torch.library.register_fake("missingglow::actnorm_conv_forward")
    def _(x, loc, scale, weight):
        _check_actnorm_conv_args(x, loc, scale, weight, "actnorm_conv_forward")
        return torch.empty_like(x, memory_format=_layout(x))

    @torch.library.register_fake("missingglow::actnorm_conv_inverse")
    def _(y, loc, scale, weight):
        _check_actnorm_conv_args(y, loc, scale, weight, "actnorm_conv_inverse")
        return torch.empty_like(y, memory_format=_layout(y))

    @torch.library.register_fake("missingglow::actnorm_conv_backward")
    def _(grad_y, x, loc, scale, weight):
        _check_actnorm_conv_args(x, loc, scale, weight, "actnorm_conv_backward")
        _check_shape(grad_y, x.shape, "actnorm_conv_backward", "grad_y must match x's shape")
        dense = torch.contiguous_format
        return (
            torch.empty_like(x, memory_format=_layout(x)),
            torch.empty_like(loc, memory_format=dense),
            torch.empty_like(scale, memory_format=dense),
            torch.empty_like(weight, memory_format=dense),
        )

    def _actnorm_conv_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _actnorm_conv_backward(ctx, grad_y):
        # the op computes all four gradients in one pass; only the wanted ones go back
        return _grads_wanted(ctx, actnorm_conv_backward(grad_y, *ctx.saved_tensors))

    torch.library.register_autograd(
        "missingglow::actnorm_conv_forward",
        _actnorm_conv_backward,
        setup_context=_actnorm_conv_setup,
    )

    def _actnorm_conv_inverse_backward(ctx, grad_x):
        # x = V'·y − loc with V' = diag(1/scale)·V and V = W⁻¹. Sampling never needs this; the
        # latent search of completion/invert.py does, for y alone (its parameters are frozen).
        y, loc, scale, weight = ctx.saved_tensors
        need_y, need_loc, need_scale, need_weight = ctx.needs_input_grad
        c = y.shape[1]
        s = scale.reshape(c)
        grad_y = grad_loc = grad_scale = grad_weight = None
        if need_y or need_scale or need_weight:
            v = torch.linalg.inv(weight.reshape(c, c))
        if need_y:
            v_scaled = v / s[:, None]
            grad_y = torch.einsum("oc,no...->nc...", v_scaled, grad_x)
        if need_scale or need_weight:
            grad_v_scaled = torch.einsum("nc...,no...->co", grad_x, y)
            if need_weight:
                grad_v = grad_v_scaled / s[:, None]
                grad_weight = (-v.T @ grad_v @ v.T).reshape(weight.shape)
            if need_scale:
                grad_scale = (-(grad_v_scaled * v).sum(1) / s**2).reshape(scale.shape)
        if need_loc:
            grad_loc = -grad_x.transpose(0, 1).reshape(c, -1).sum(1).reshape(loc.shape)
        return grad_y, grad_loc, grad_scale, grad_weight

    torch.library.register_autograd(
        "missingglow::actnorm_conv_inverse",
        _actnorm_conv_inverse_backward,
        setup_context=_actnorm_conv_setup,
    )

    # --- ActNorm + 1×1 conv as one GEMM, split for the coupling (autograd: channel_gemm.cpp) ----

    @torch.library.register_fake("missingglow::channel_gemm_split_forward")
    def _(x, weight, bias):
        op = "channel_gemm_split_forward"
        _check_channel_gemm_args(x, weight, op)
        _check_shape(bias, (x.shape[1],), op, f"bias must be (C,) with C = {x.shape[1]}")
        _check_like(x, (bias,), "x, weight and bias", op)
        return (
            torch.empty_like(x, memory_format=torch.channels_last),
            torch.empty_like(x[:, : x.shape[1] // 2], memory_format=torch.channels_last),
        )

    @torch.library.register_fake("missingglow::channel_gemm_split_backward")
    def _(grad_out, grad_half, x, weight):
        op = "channel_gemm_split_backward"
        _check_channel_gemm_args(x, weight, op)
        n, c, height, width = x.shape
        _check_shape(grad_out, x.shape, op, "grad_out must match x's shape")
        half = "grad_half must be the shape of x's first half of channels"
        _check_shape(grad_half, (n, c // 2, height, width), op, half)
        return (
            torch.empty_like(x, memory_format=torch.channels_last),
            weight.new_empty(weight.shape),
            weight.new_empty(weight.shape[:1]),
        )

    # --- the affine coupling --------------------------------------------------------------------

    @torch.library.register_fake("missingglow::coupling_step_forward")
    def _(x, h):
        _check_coupling_step_args(x, h, "coupling_step_forward")
        return torch.empty_like(x, memory_format=_layout(x)), _per_sample(x)

    @torch.library.register_fake("missingglow::coupling_step_inverse")
    def _(y, h):
        _check_coupling_step_args(y, h, "coupling_step_inverse")
        return torch.empty_like(y, memory_format=_layout(y)), _per_sample(y)

    @torch.library.register_fake("missingglow::coupling_step_backward")
    def _(grad_y, grad_logdet, y, h):
        _check_coupling_step_args(y, h, "coupling_step_backward")
        _check_backward_grads(grad_y, grad_logdet, y, "coupling_step_backward", "y")
        return tuple(torch.empty_like(y, memory_format=_layout(y)) for _ in range(2))

    # coupling_step_forward's autograd formula is C++ (csrc/coupling_autograd.cpp)

    def _coupling_step_inverse_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _coupling_step_inverse_backward(ctx, grad_x, grad_logdet):
        # x = [y_a, y_b/s − t] and logdet = −Σ log s, with s = sigmoid(log_s + 2) and
        # ds/dlog_s = s(1 − s). Sampling never needs this; the latent search of
        # completion/invert.py does, for y alone (its parameters are frozen).
        y, h = ctx.saved_tensors
        need_y, need_h = ctx.needs_input_grad
        grad_x, grad_logdet = _zeros_for_none(grad_x, grad_logdet, y)
        _, y_b = y.chunk(2, 1)
        log_s, _ = h.chunk(2, 1)
        grad_a, grad_b = grad_x.chunk(2, 1)
        s = torch.sigmoid(log_s + 2)
        grad_y = grad_h = None
        if need_y:
            grad_y = torch.cat([grad_a, grad_b / s], 1)
        if need_h:
            per_sample = grad_logdet.view(-1, *([1] * (y.dim() - 1)))
            grad_log_s = -(grad_b * y_b / s + per_sample) * (1 - s)
            grad_h = torch.cat([grad_log_s, -grad_b], 1)
        return grad_y, grad_h

    torch.library.register_autograd(
        "missingglow::coupling_step_inverse",
        _coupling_step_inverse_backward,
        setup_context=_coupling_step_inverse_setup,
    )

    # --- a whole flow step ----------------------------------------------------------------------

    def _hidden_like(x, w1):
        n, _, height, width = x.shape
        hidden = x.new_empty(n, w1.shape[0], height, width)
        return hidden.contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("missingglow::flow_step_forward")
    def _(x, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3):
        _check_flow_step_args(
            x, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3, "flow_step_forward"
        )
        cl = torch.channels_last
        return (
            torch.empty_like(x, memory_format=cl),
            _per_sample(x),
            _hidden_like(x, w1),
            _hidden_like(x, w1),
            torch.empty_like(x, memory_format=cl),
        )

    @torch.library.register_fake("missingglow::flow_step_inverse")
    def _(y, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3):
        _check_flow_step_args(
            y, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3, "flow_step_inverse"
        )
        return torch.empty_like(y, memory_format=torch.channels_last), _per_sample(y)

    @torch.library.register_fake("missingglow::flow_step_backward")
    def _(grad_y, grad_logdet, x, y, h1, h2, h, *params):
        op = "flow_step_backward"
        _check_flow_step_args(x, *params, op)
        _check_backward_grads(grad_y, grad_logdet, x, op, "x")
        for t in (y, h):
            _check_shape(t, x.shape, op, "y and h must match x's shape")
        n, _, height, width = x.shape
        for t in (h1, h2):
            _check_shape(
                t, (n, params[3].shape[0], height, width), op, "h1 and h2 must be (N, hidden, H, W)"
            )
        grads = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
        return (torch.empty_like(x, memory_format=torch.channels_last), *grads)

    def _flow_step_setup(ctx, inputs, output):
        x, *params = inputs
        y, _, h1, h2, h = output
        ctx.mark_non_differentiable(h1, h2, h)
        ctx.save_for_backward(x, y, h1, h2, h, *params)

    def _flow_step_backward(ctx, grad_y, grad_logdet, *unused):
        # the op computes all eleven gradients in one pass; only the wanted ones go back
        x, y, *rest = ctx.saved_tensors
        grad_y, grad_logdet = _zeros_for_none(grad_y, grad_logdet, y)
        grads = torch.ops.missingglow.flow_step_backward.default(grad_y, grad_logdet, x, y, *rest)
        return _grads_wanted(ctx, grads)

    torch.library.register_autograd(
        "missingglow::flow_step_forward", _flow_step_backward, setup_context=_flow_step_setup
    )

    def _flow_step_inverse_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _flow_step_inverse_backward(ctx, grad_x, grad_logdet):
        # Sampling never needs this; the latent search of completion/invert.py does, for y alone.
        # The inverse again from the differentiable pieces (the fused step's own, so the
        # gradient is that of what the op computes), and its vector-Jacobian product for the
        # inputs that want one.
        from .fused_step import coupling_net  # fused_step imports this module: not at the top

        inputs = [
            t.detach().requires_grad_(wanted)
            for t, wanted in zip(ctx.saved_tensors, ctx.needs_input_grad, strict=True)
        ]
        y, loc, scale, weight, *net = inputs
        with torch.enable_grad():
            half = y.shape[1] // 2
            out, logdet = coupling_step_inverse(y, coupling_net(y[:, :half], *net))
            x = actnorm_conv_inverse(out, loc, scale, weight)
        grad_x = torch.zeros_like(x) if grad_x is None else grad_x
        grad_logdet = torch.zeros_like(logdet) if grad_logdet is None else grad_logdet
        # the logdet depends on y and the network only: with those frozen it is a constant
        used = [(t, g) for t, g in ((x, grad_x), (logdet, grad_logdet)) if t.requires_grad]
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad([t for t, _ in used], wanted, [g for _, g in used]))
        return tuple(next(grads) if t.requires_grad else None for t in inputs)

    torch.library.register_autograd(
        "missingglow::flow_step_inverse",
        _flow_step_inverse_backward,
        setup_context=_flow_step_inverse_setup,
    )

    _ADAM_MISMATCH = (
        "each grad and moment must have its param's shape, dtype, device and memory layout"
    )

    @torch.library.register_fake("missingglow::masked_adam_")
    def _(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, found_inf):
        op = "masked_adam_"
        lists = (grads, exp_avgs, exp_avg_sqs, steps)
        torch._check(
            all(len(t) == len(params) for t in lists),
            lambda: (
                f"{op}: params, grads, exp_avgs, exp_avg_sqs and steps must be lists of one length"
            ),
        )
        for p, *state in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            for t in state:
                _check_shape(t, p.shape, op, _ADAM_MISMATCH)
