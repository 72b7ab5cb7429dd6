"""Thin wrappers over the fused ops in missingglow._C (torch.ops.missingglow.*).

Each op has a fake kernel, so torch.compile can trace it, and an autograd formula. Without the
compiled extension, `AVAILABLE` is False, `WHY_UNAVAILABLE` says why, and the model falls back to
the pure-PyTorch reference (missingglow/reference.py) with one warning.
"""
import torch

try:
    from . import _C  # noqa: F401  (loading it registers the ops)
    AVAILABLE, WHY_UNAVAILABLE = True, None
except ImportError as err:  # not built, or built against another torch
    AVAILABLE, WHY_UNAVAILABLE = False, f"missingglow._C could not be loaded ({err})"


def actnorm_conv(x, loc, scale, weight):
    """y = W·(scale ⊙ (x + loc)) over channels, one GEMM with W·diag(scale) and its bias folded in.

    loc and scale hold one number per channel (any shape, e.g. ActNorm's (1, C, 1, 1)); weight is
    (C, C) or (C, C, 1, 1). A channels-last x gives a channels-last y; other layouts give a
    contiguous y. Gradients flow to all four arguments.
    """
    return torch.ops.missingglow.actnorm_conv_forward.default(x, loc, scale, weight)


def actnorm_conv_inverse(y, loc, scale, weight):
    """x = scale⁻¹ ⊙ (W⁻¹·y) − loc, the inverse of `actnorm_conv`."""
    return torch.ops.missingglow.actnorm_conv_inverse.default(y, loc, scale, weight)


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


def coupling_forward(x_b, log_s, t):
    """(y_b, logdet): y_b = (x_b + t)·sigmoid(log_s + 2), logdet = Σ log sigmoid(log_s + 2) per sample."""
    return torch.ops.missingglow.coupling_forward.default(x_b, log_s, t)


def coupling_inverse(y_b, log_s, t):
    """(x_b, logdet): x_b = y_b / sigmoid(log_s + 2) − t, logdet = −Σ log sigmoid(log_s + 2)."""
    return torch.ops.missingglow.coupling_inverse.default(y_b, log_s, t)


if AVAILABLE:
    def _per_sample(x):
        return x.new_empty(x.shape[:1])

    @torch.library.register_fake("missingglow::coupling_forward")
    def _(x_b, log_s, t):
        return torch.empty_like(x_b, memory_format=torch.contiguous_format), _per_sample(x_b)

    @torch.library.register_fake("missingglow::coupling_inverse")
    def _(y_b, log_s, t):
        return torch.empty_like(y_b, memory_format=torch.contiguous_format), _per_sample(y_b)

    @torch.library.register_fake("missingglow::coupling_backward")
    def _(grad_y, grad_logdet, x_b, log_s, t):
        return tuple(torch.empty_like(x_b, memory_format=torch.contiguous_format) for _ in range(3))

    def _coupling_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _coupling_backward(ctx, grad_y, grad_logdet):
        x_b, log_s, t = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(x_b)
        if grad_logdet is None:
            grad_logdet = x_b.new_zeros(x_b.shape[:1])
        return torch.ops.missingglow.coupling_backward.default(grad_y, grad_logdet, x_b, log_s, t)

    torch.library.register_autograd("missingglow::coupling_forward", _coupling_backward,
                                    setup_context=_coupling_setup)

    def _coupling_inverse_backward(ctx, grad_x, grad_logdet):
        # x = y/s − t and logdet = −Σ log s, with s = sigmoid(log_s + 2) and ds/dlog_s = s(1 − s).
        # Sampling never needs this; it is here so that gradients through the inverse are right.
        y_b, log_s, t = ctx.saved_tensors
        s = torch.sigmoid(log_s + 2)
        grad_x = torch.zeros_like(y_b) if grad_x is None else grad_x
        grad_logdet = y_b.new_zeros(y_b.shape[:1]) if grad_logdet is None else grad_logdet
        per_sample = grad_logdet.view(-1, *([1] * (y_b.dim() - 1)))
        grad_log_s = -(grad_x * y_b / s + per_sample) * (1 - s)
        return grad_x / s, grad_log_s, -grad_x

    torch.library.register_autograd("missingglow::coupling_inverse", _coupling_inverse_backward,
                                    setup_context=_coupling_setup)

    # --- actnorm + 1×1 conv ---------------------------------------------------------------------

    def _layout(x):
        """The layout the C++ ops return (csrc/flow.h, layout_is_channels_last)."""
        channels_last = (x.dim() == 4 and not x.is_contiguous()
                         and x.is_contiguous(memory_format=torch.channels_last))
        return torch.channels_last if channels_last else torch.contiguous_format

    @torch.library.register_fake("missingglow::actnorm_conv_forward")
    def _(x, loc, scale, weight):
        return torch.empty_like(x, memory_format=_layout(x))

    @torch.library.register_fake("missingglow::actnorm_conv_inverse")
    def _(y, loc, scale, weight):
        return torch.empty_like(y, memory_format=_layout(y))

    @torch.library.register_fake("missingglow::actnorm_conv_backward")
    def _(grad_y, x, loc, scale, weight):
        return (torch.empty_like(x, memory_format=_layout(x)), torch.empty_like(loc, memory_format=torch.contiguous_format),
                torch.empty_like(scale, memory_format=torch.contiguous_format),
                torch.empty_like(weight, memory_format=torch.contiguous_format))

    def _actnorm_conv_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _actnorm_conv_backward(ctx, grad_y):
        return torch.ops.missingglow.actnorm_conv_backward.default(grad_y, *ctx.saved_tensors)

    torch.library.register_autograd("missingglow::actnorm_conv_forward", _actnorm_conv_backward,
                                    setup_context=_actnorm_conv_setup)

    def _actnorm_conv_inverse_backward(ctx, grad_x):
        # x = V'·y − loc with V' = diag(1/scale)·V and V = W⁻¹. Sampling never needs this; it is
        # here so that gradients through the inverse are right.
        y, loc, scale, weight = ctx.saved_tensors
        c = y.shape[1]
        s = scale.reshape(c)
        v = torch.linalg.inv(weight.reshape(c, c))
        v_scaled = v / s[:, None]
        grad_y = torch.einsum("oc,no...->nc...", v_scaled, grad_x)
        grad_v_scaled = torch.einsum("nc...,no...->co", grad_x, y)
        grad_v = grad_v_scaled / s[:, None]
        grad_scale = -(grad_v_scaled * v).sum(1) / s ** 2
        grad_weight = -v.T @ grad_v @ v.T
        grad_loc = -grad_x.transpose(0, 1).reshape(c, -1).sum(1)
        return (grad_y, grad_loc.reshape(loc.shape), grad_scale.reshape(scale.shape),
                grad_weight.reshape(weight.shape))

    torch.library.register_autograd("missingglow::actnorm_conv_inverse", _actnorm_conv_inverse_backward,
                                    setup_context=_actnorm_conv_setup)

    # --- whole-tensor coupling --------------------------------------------------------------------

    @torch.library.register_fake("missingglow::coupling_step_forward")
    def _(x, h):
        return torch.empty_like(x, memory_format=_layout(x)), _per_sample(x)

    @torch.library.register_fake("missingglow::coupling_step_inverse")
    def _(y, h):
        return torch.empty_like(y, memory_format=_layout(y)), _per_sample(y)

    @torch.library.register_fake("missingglow::coupling_step_backward")
    def _(grad_y, grad_logdet, y, h):
        return tuple(torch.empty_like(y, memory_format=_layout(y)) for _ in range(2))

    def _coupling_step_setup(ctx, inputs, output):
        ctx.save_for_backward(output[0], inputs[1])  # the output y and h: x is not needed

    def _coupling_step_backward(ctx, grad_y, grad_logdet):
        y, h = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        if grad_logdet is None:
            grad_logdet = y.new_zeros(y.shape[:1])
        return torch.ops.missingglow.coupling_step_backward.default(grad_y, grad_logdet, y, h)

    torch.library.register_autograd("missingglow::coupling_step_forward", _coupling_step_backward,
                                    setup_context=_coupling_step_setup)

    def _coupling_step_inverse_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _coupling_step_inverse_backward(ctx, grad_x, grad_logdet):
        # x = [y_a, y_b/s − t], logdet = −Σ log s: the coupling_inverse formulas on the halves.
        y, h = ctx.saved_tensors
        grad_x = torch.zeros_like(y) if grad_x is None else grad_x
        grad_logdet = y.new_zeros(y.shape[:1]) if grad_logdet is None else grad_logdet
        _, y_b = y.chunk(2, 1)
        log_s, _ = h.chunk(2, 1)
        grad_a, grad_b = grad_x.chunk(2, 1)
        s = torch.sigmoid(log_s + 2)
        per_sample = grad_logdet.view(-1, *([1] * (y.dim() - 1)))
        grad_log_s = -(grad_b * y_b / s + per_sample) * (1 - s)
        return torch.cat([grad_a, grad_b / s], 1), torch.cat([grad_log_s, -grad_b], 1)

    torch.library.register_autograd("missingglow::coupling_step_inverse", _coupling_step_inverse_backward,
                                    setup_context=_coupling_step_inverse_setup)
