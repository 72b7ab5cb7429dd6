"""The pure-PyTorch reference of every fast op in ops.py, name for name and signature for signature.

Each function here is the plain math of its op, written with the layers' own formulas
(layers.py), so that a fused op and its reference are compared one to one: in the tests, in
`missingglow check` and in bench/flows.py. Gradients come from autograd; the `*_backward`
functions are those gradients in the backward ops' calling convention. `zero_conv` and
`coupling_net` have their fast versions in fused_step.py, where the fused step runs the coupling
network on ATen.
"""

import torch
from torch.nn import functional as F

# --- ActNorm + invertible 1×1 conv ---------------------------------------------------------------


def actnorm_conv(x, loc, scale, weight):
    """y = W·(scale ⊙ (x + loc)): ActNorm followed by the invertible 1×1 convolution."""
    return F.conv2d(scale * (x + loc), weight.view(*weight.shape[:2], 1, 1))


def actnorm_conv_inverse(y, loc, scale, weight):
    """x = scale⁻¹ ⊙ (W⁻¹·y) − loc."""
    w_inv = torch.linalg.inv(weight.view(*weight.shape[:2]))
    return F.conv2d(y, w_inv.view(*w_inv.shape, 1, 1)) / scale - loc


def actnorm_conv_backward(grad_y, x, loc, scale, weight):
    """(grad_x, grad_loc, grad_scale, grad_weight) of Σ grad_y·actnorm_conv(x, loc, scale,
    weight)."""
    inputs = [t.detach().requires_grad_() for t in (x, loc, scale, weight)]
    with torch.enable_grad():
        return torch.autograd.grad(actnorm_conv(*inputs), inputs, grad_y)


def channel_gemm_split(x, weight, bias):
    """(out, out_a): out = x·weight + bias over the channels (a 1×1 conv with weightᵀ), and
    out_a its first half of channels."""
    out = F.conv2d(x, weight.T[:, :, None, None], bias)
    return out, out[:, : out.shape[1] // 2]


def channel_gemm_split_backward(grad_out, grad_half, x, weight):
    """(grad_x, grad_weight, grad_bias) of Σ grad_out·out + Σ grad_half·out_a."""
    bias = weight.new_zeros(weight.shape[1])
    inputs = [t.detach().requires_grad_() for t in (x, weight, bias)]
    with torch.enable_grad():
        return torch.autograd.grad(channel_gemm_split(*inputs), inputs, (grad_out, grad_half))


# --- the affine coupling -------------------------------------------------------------------------


def coupling_step(x, h):
    """(y, logdet) of the affine coupling: x = [x_a, x_b] and h = [log_s, t] along channels give
    y = [x_a, (x_b + t)·s] with s = sigmoid(log_s + 2), and logdet = Σ log s per sample."""
    x_a, x_b = x.chunk(2, 1)
    log_s, t = h.chunk(2, 1)
    s = torch.sigmoid(log_s + 2)
    logdet = F.logsigmoid(log_s + 2).flatten(1).sum(1)  # log s without rounding s first
    return torch.cat([x_a, (x_b + t) * s], 1), logdet


def coupling_step_inverse(y, h):
    """(x, logdet): x = [y_a, y_b / sigmoid(log_s + 2) − t], logdet = −Σ log sigmoid(log_s + 2)."""
    y_a, y_b = y.chunk(2, 1)
    log_s, t = h.chunk(2, 1)
    s = torch.sigmoid(log_s + 2)
    logdet = F.logsigmoid(log_s + 2).flatten(1).sum(1)
    return torch.cat([y_a, y_b / s - t], 1), -logdet


def coupling_step_backward(grad_y, grad_logdet, y, h):
    """(grad_x, grad_h) of Σ grad_y·y + Σ grad_logdet·logdet for (y, logdet) = coupling_step(x, h),
    given the output y (the backward op's convention: x is rebuilt, h is taken as independent)."""
    x = coupling_step_inverse(y, h)[0].detach().requires_grad_()
    h = h.detach().requires_grad_()
    with torch.enable_grad():
        return torch.autograd.grad(coupling_step(x, h), [x, h], (grad_y, grad_logdet))


# --- the coupling network ------------------------------------------------------------------------


def zero_conv(x, weight, bias, scale):
    """ZeroConv2d: a 3×3 convolution of x padded with ones, scaled by exp(3·scale)."""
    return F.conv2d(F.pad(x, [1, 1, 1, 1], value=1), weight, bias) * torch.exp(scale * 3)


def coupling_net(x_a, w1, b1, w2, b2, w3, b3, s3):
    """AffineCoupling's network: conv3x3(w1, b1) → ReLU → conv1x1(w2, b2) → ReLU →
    ZeroConv2d(w3, b3, s3)."""
    hidden = F.relu(F.conv2d(x_a, w1, b1, padding=1))
    hidden = F.relu(F.conv2d(hidden, w2, b2))
    return zero_conv(hidden, w3, b3, s3)


# --- a whole flow step ---------------------------------------------------------------------------


def flow_step(x, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3):
    """(y, logdet) of an affine flow step: `actnorm_conv`, then `coupling_step` with the network
    `coupling_net` run on the first half. logdet is the coupling's alone (ActNorm's and the 1×1
    conv's are the caller's)."""
    out = actnorm_conv(x, loc, scale, weight)
    return coupling_step(out, coupling_net(out[:, : out.shape[1] // 2], w1, b1, w2, b2, w3, b3, s3))


def flow_step_inverse(y, loc, scale, weight, w1, b1, w2, b2, w3, b3, s3):
    """(x, logdet): the inverse of `flow_step`, logdet = minus the coupling's logdet."""
    h = coupling_net(y[:, : y.shape[1] // 2], w1, b1, w2, b2, w3, b3, s3)
    out, logdet = coupling_step_inverse(y, h)
    return actnorm_conv_inverse(out, loc, scale, weight), logdet


# --- the optimiser's update -----------------------------------------------------------------------


def masked_adam_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, found_inf):
    """Adam's update (the fused kernel's formula) in place, or nothing where found_inf is 1, with
    no value read on the host. `lr`, `found_inf` and each of `steps` are 0-dim tensors."""
    n = len(params)
    ok = 1 - found_inf.to(params[0].dtype)
    # a bad step's gradients may be non-finite: zero them in one pass, so that the masked
    # arithmetic below leaves every tensor exactly as it was
    flat = torch.nan_to_num(torch.cat([g.reshape(-1) for g in grads]), 0.0, 0.0, 0.0).mul_(ok)
    grads = [
        part.view(g.shape)
        for part, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)
    ]

    # the step count (put back on a bad step) and the bias corrections in float64, as the fused
    # kernel computes them; at least 1 step in them, so a bad first step divides by no zero
    torch._foreach_add_(steps, [ok] * n)
    t = torch.stack(steps).double().clamp_min(1)
    rate = ((-lr.double() * ok) / (1 - beta1**t)).to(ok.dtype)  # −lr/(1 − β1^t), 0 when bad
    correction2 = torch.sqrt(1 - beta2**t).to(ok.dtype)  # √(1 − β2^t)

    # the moments: m ← β1·m + (1 − β1)·g and v ← β2·v + (1 − β2)·g², or unchanged when bad
    torch._foreach_mul_(exp_avgs, [1 - (1 - beta1) * ok] * n)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, [1 - (1 - beta2) * ok] * n)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

    # θ ← θ + rate · m / (√v / √(1 − β2^t) + ε)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, list(correction2.unbind()))
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(update, list(rate.unbind()))
    torch._foreach_add_(params, update)
