"""Memory-saving training over a block's flow steps: no activations kept inside the flow.

`flows_without_activations` runs a list of flow steps under a torch.autograd.Function that keeps
only the last output: its backward rebuilds each step's input from its output with the step's
inverse and recomputes that step to get its gradients (the flow is invertible), so activation
memory does not grow with the number of steps. Fused steps do their parameter-only work once for
the whole list, forward and backward, as they do without memory saving (step_params.py).
"""

import torch

from .fused_step import FusedFlowStep, run_steps
from .step_params import StepParams, prepare_steps


def _run(flows, x):
    if _all_fused(flows):
        return run_steps(flows, x)
    out, logdet = x, x.new_zeros(x.shape[0])
    for flow in flows:
        out, det = flow(out)
        logdet = logdet + det
    return out, logdet


def _all_fused(flows):
    return all(isinstance(flow, FusedFlowStep) for flow in flows)


class _FlowsWithoutActivations(torch.autograd.Function):
    """(x, flows, *params) → (y, logdet) through every flow step, saving only y."""

    @staticmethod
    def forward(ctx, x, flows, *params):
        with torch.no_grad():
            out, logdet = _run(flows, x)
        ctx.flows = flows
        ctx.save_for_backward(out)
        return out, logdet

    @staticmethod
    def backward(ctx, grad_out, grad_logdet):
        (y,) = ctx.saved_tensors
        y = y.detach()
        if grad_out is None:
            grad_out = torch.zeros_like(y)
        if grad_logdet is None:
            grad_logdet = y.new_zeros(y.shape[0])
        need_x, _, *need_params = ctx.needs_input_grad
        backward = _fused_backward if _all_fused(ctx.flows) else _per_step_backward
        grad_x, param_grads = backward(ctx.flows, y, grad_out, grad_logdet, need_x, need_params)
        return (grad_x, None, *param_grads)


def _fused_backward(flows, y, grad_out, grad_logdet, need_x, need_params):
    """(grad_x or None, the parameters' gradients in order) of fused steps: each step's input
    rebuilt and its gradients taken from its output (FusedFlowStep.backward_from_output), with
    the steps' forward and inverse parameter tensors prepared once, and one backward through
    the batched pass that made them."""
    params = [p for flow in flows for p in flow.parameters()]
    if not need_x and not any(need_params):
        return None, [None] * len(params)
    height, width = y.shape[2:]
    with torch.enable_grad():
        forward = prepare_steps(flows, height, width)
    with torch.no_grad():
        inverse = prepare_steps(flows, height, width, inverse=True)
    outputs, grads = [], []
    for i in reversed(range(len(flows))):
        leaves = StepParams(*(t.detach().requires_grad_(t.requires_grad) for t in forward.steps[i]))
        # the first step's input gradient goes to the caller alone, who may not want it
        y, grad_out, by_field = flows[i].backward_from_output(
            y, grad_out, grad_logdet, leaves, inverse.steps[i], need_x=need_x or i > 0
        )
        for name, grad in by_field.items():
            outputs.append(getattr(forward.steps[i], name))
            grads.append(grad)
    if forward.logdet.requires_grad:
        outputs.append(forward.logdet)
        grads.append(grad_logdet.sum())
    wanted = [p for p, need in zip(params, need_params, strict=True) if need]
    by_param = {}
    if wanted and outputs:
        found = torch.autograd.grad(outputs, wanted, grads, allow_unused=True)
        by_param = dict(zip(wanted, found, strict=True))
    return grad_out, [
        by_param.get(p) if need else None for p, need in zip(params, need_params, strict=True)
    ]


def _per_step_backward(flows, y, grad_out, grad_logdet, need_x, need_params):
    """(grad_x or None, the parameters' gradients in order) of any flow steps: each step's input
    rebuilt through its inverse and the step run again under autograd."""
    needs, start = [], 0  # per flow, which of its parameters want a gradient
    for flow in flows:
        count = len(list(flow.parameters()))
        needs.append(need_params[start : start + count])
        start += count
    param_grads = []
    for i in reversed(range(len(flows))):
        flow, need = flows[i], needs[i]
        params = list(flow.parameters())
        # the first step's input gradient goes to the caller alone, who may not want it
        x_wanted = need_x or i > 0
        if not x_wanted and not any(need):
            param_grads.append([None] * len(params))
            continue
        with torch.no_grad():
            x = flow.reverse(y)  # this step's input, rebuilt from its output
        wanted = [p for p, w in zip(params, need, strict=True) if w]
        with torch.enable_grad():
            x = x.detach().requires_grad_(x_wanted)
            out, det = flow(x)
            inputs = ([x] if x_wanted else []) + wanted
            # det is a constant where no unfrozen parameter reaches the step's logdet
            used = [(t, g) for t, g in ((out, grad_out), (det, grad_logdet)) if t.requires_grad]
            grads = torch.autograd.grad(
                [t for t, _ in used], inputs, [g for _, g in used], allow_unused=True
            )
        if x_wanted:
            grad_out, grads = grads[0], grads[1:]
        by_param = dict(zip(wanted, grads, strict=True))
        param_grads.append(
            [by_param.get(p) if w else None for p, w in zip(params, need, strict=True)]
        )
        y = x.detach()
    ordered = [g for step in reversed(param_grads) for g in step]
    return (grad_out if need_x else None), ordered


def flows_without_activations(flows, x):
    """(y, logdet) of the flow steps applied in order, keeping no activations for the backward.

    Gradients equal the standard ones up to the rounding of rebuilding each input through the
    inverse. Under torch.no_grad it is simply the plain run.
    """
    params = [p for flow in flows for p in flow.parameters()]
    if not torch.is_grad_enabled():
        return _run(flows, x)
    return _FlowsWithoutActivations.apply(x, list(flows), *params)
