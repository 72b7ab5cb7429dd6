"""A block's parameter-only work, done once for all its fused flow steps instead of once per step.

Each fused flow step needs tensors that depend on its parameters alone: the 1×1 conv's matrix
W = P·(L⊙mask + I)·(U⊙mask + diag(sign·exp(w_s))), ActNorm folded into it, the zero-conv's gain
exp(3·scale) folded into its weights and bias, the border its padding with ones adds, and the
log-determinants of ActNorm and the 1×1 conv. Per step each is a few tiny ops, which on a GPU cost
host time rather than arithmetic. `prepare_steps` stacks each parameter kind across the steps,
computes every step's tensors in one batched pass and hands each step its slice (`StepParams`).
Gradients flow back through the stacks into each step's own parameters, so parameter names,
state dicts and checkpoints are those of layers.FlowStep.
"""

from typing import NamedTuple

import torch
from torch.nn import functional as F

from .layers import InvConv2dLU

PRECISIONS = ("fp32", "bf16")


class StepParams(NamedTuple):
    """One fused step's parameter-derived tensors, for the forward or for the inverse."""

    gemm_weight: torch.Tensor  # (C, C) A of the channel GEMM x·A + b that is ActNorm + 1×1 conv:
    gemm_bias: torch.Tensor  # forward A = (W·diag(scale))ᵀ, b = W·diag(scale)·loc (C,);
    # inverse A = (diag(1/scale)·W⁻¹)ᵀ, b = −loc
    matrix: torch.Tensor  # (C, C) W itself, for the C++ driver (ops.flow_step)
    w1: torch.Tensor  # the hidden 3×3 conv in its compute dtype, channels-last
    b1: torch.Tensor
    w2: torch.Tensor  # the hidden 1×1 conv in its compute dtype
    b2: torch.Tensor
    w3: torch.Tensor  # the zero-conv's weights times exp(3·scale), channels-last
    border: torch.Tensor  # (1, C_out, H, W): its bias times exp(3·scale) plus what the
    # padding with ones contributes


class BlockParams(NamedTuple):
    steps: list  # one StepParams per step, in order
    logdet: torch.Tensor  # scalar: Σ over the steps of ActNorm's and the 1×1 conv's logdets
    # of one image (None for the inverse)


def hidden_dtype(precision, dtype):
    """The dtype the coupling network's two hidden convolutions run in, for parameters of
    `dtype`."""
    return torch.bfloat16 if precision == "bf16" else dtype


def prepare_steps(steps, height, width, inverse=False):
    """BlockParams of `steps` (fused flow steps of one kind: LU or not, affine or additive, one
    precision) for (height, width) activations, for the forward or for the inverse."""
    first = steps[0]
    lu = isinstance(first.invconv, InvConv2dLU)
    for step in steps:
        if (
            isinstance(step.invconv, InvConv2dLU) != lu
            or step.precision != first.precision
            or step.coupling.affine != first.coupling.affine
        ):
            raise ValueError("prepare_steps needs steps of one kind (lu, affine, precision)")
    loc = _stack(steps, lambda s: s.actnorm.loc).reshape(len(steps), -1)  # (F, C)
    scale = _stack(steps, lambda s: s.actnorm.scale).reshape(len(steps), -1)
    matrix, conv_logdet = _lu_matrices(steps) if lu else _full_matrices(steps)
    logdet = None
    if inverse:
        gemm_weight = (torch.linalg.inv(matrix) / scale[:, :, None]).transpose(1, 2)
        gemm_bias = -loc
    else:
        folded = matrix * scale[:, None, :]  # W·diag(scale)
        gemm_weight = folded.transpose(1, 2)
        gemm_bias = torch.bmm(folded, loc[:, :, None])[:, :, 0]
        logdet = (torch.log(torch.abs(scale)).sum() + conv_logdet) * (height * width)
    per_step = [
        gemm_weight.unbind(0),
        gemm_bias.unbind(0),
        matrix.unbind(0),
        *_network(steps, height, width),
    ]
    return BlockParams([StepParams(*fields) for fields in zip(*per_step, strict=True)], logdet)


def _stack(steps, get):
    """One parameter kind of every step, stacked; reshaped after the stack, not step by step,
    so that the backward has one view node instead of one per step."""
    return torch.stack([get(step) for step in steps])


def _lu_matrices(steps):
    """(F, C, C) W = P·(L⊙mask + I)·(U⊙mask + diag(sign·exp(w_s))) and Σ w_s over every step.

    The masks and the identity are functions of C alone, the same buffers in every step."""
    conv = steps[0].invconv
    w_s = _stack(steps, lambda s: s.invconv.w_s)
    lower = _stack(steps, lambda s: s.invconv.w_l) * conv.l_mask + conv.l_eye
    diagonal = torch.diag_embed(_stack(steps, lambda s: s.invconv.s_sign) * torch.exp(w_s))
    upper = _stack(steps, lambda s: s.invconv.w_u) * conv.u_mask + diagonal
    return _stack(steps, lambda s: s.invconv.w_p) @ lower @ upper, w_s.sum()


def _full_matrices(steps):
    """(F, C, C) W of plain 1×1 convs and Σ log|det W| over every step."""
    matrix = _stack(steps, lambda s: s.invconv.weight)
    matrix = matrix.reshape(matrix.shape[:3])
    return matrix, torch.linalg.slogdet(matrix)[1].sum()


def _network(steps, height, width):
    """Per step (w1, b1, w2, b2, w3, border) of the coupling network (see StepParams).

    The hidden convolutions' parameters are the steps' own unless they are cast (one cast for
    every step at once). Computed convolution weights are stacked as (F, out, kh, kw, in) so that
    each step's slice, viewed back as (out, in, kh, kw), is channels-last: the layout the
    channels-last activations convolve with (FusedFlowStep stores its 3×3 weights so), which a
    contiguous weight would be copied into on every call."""
    nets = [step.coupling.net for step in steps]
    dtype = hidden_dtype(steps[0].precision, nets[0][0].weight.dtype)
    hidden = [
        [net[0].weight for net in nets],
        [net[0].bias for net in nets],
        [net[2].weight for net in nets],
        [net[2].bias for net in nets],
    ]
    if dtype != nets[0][0].weight.dtype:  # a cast: one for every step at once
        w1 = torch.stack([w.permute(0, 2, 3, 1) for w in hidden[0]]).to(dtype)
        hidden = [w1.permute(0, 1, 4, 2, 3).unbind(0)] + [
            torch.stack(kind).to(dtype).unbind(0) for kind in hidden[1:]
        ]
    gain = torch.stack([net[4].scale for net in nets]).reshape(len(nets), -1)  # (F, C_out)
    gain = torch.exp(gain * 3)
    w3 = torch.stack([net[4].conv.weight.permute(0, 2, 3, 1) for net in nets])
    w3 = w3 * gain[:, :, None, None, None]
    bias = torch.stack([net[4].conv.bias for net in nets]) * gain
    border = _padding_term(w3.sum(4), height, width) + bias[:, :, None, None]
    return (
        *hidden,
        w3.permute(0, 1, 4, 2, 3).unbind(0),
        border[:, None].unbind(0),
    )


def _padding_term(weight_sum, height, width):
    """(F, C_out, H, W): what a 3×3 conv with weights summed over inputs `weight_sum`
    (F, C_out, 3, 3) adds where it reads the ones its input is padded with: the convolution of a
    zero image framed by ones, every step's in one call."""
    frame = weight_sum.new_ones(1, 1, height + 2, width + 2)
    frame[:, :, 1:-1, 1:-1] = 0
    count = weight_sum.shape[0] * weight_sum.shape[1]
    out = F.conv2d(frame, weight_sum.reshape(count, 1, 3, 3))
    return out.view(*weight_sum.shape[:2], height, width)
