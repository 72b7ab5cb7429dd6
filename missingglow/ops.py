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
