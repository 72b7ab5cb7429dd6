"""Memory-saving training over a block's flow steps: no activations kept inside the flow.

`flows_without_activations` runs a list of flow steps under a torch.autograd.Function that keeps
only the last output: its backward rebuilds each step's input from its output with the step's
inverse and recomputes that step to get its gradients (the flow is invertible), so activation
memory does not grow with the number of steps.
"""
import torch

from .fused_step import FusedFlowStep


class _FlowsWithoutActivations(torch.autograd.Function):
    """(x, flows, *params) → (y, logdet) through every flow step, saving only y."""

    @staticmethod
    def forward(ctx, x, flows, *params):
        with torch.no_grad():
            out, logdet = x, x.new_zeros(x.shape[0])
            for flow in flows:
                out, det = flow(out)
                logdet = logdet + det
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
        needs, start = [], 0  # per flow, which of its parameters want a gradient
        for flow in ctx.flows:
            count = len(list(flow.parameters()))
            needs.append(need_params[start:start + count])
            start += count
        param_grads = []
        for i in reversed(range(len(ctx.flows))):
            flow, need = ctx.flows[i], needs[i]
            params = list(flow.parameters())
            # the first step's input gradient goes to the caller alone, who may not want it
            x_wanted = need_x or i > 0
            if not x_wanted and not any(need):
                param_grads.append([None] * len(params))
                continue
            if isinstance(flow, FusedFlowStep):
                x, grad_out, by_param = flow.backward_from_output(y, grad_out, grad_logdet)
            else:
                with torch.no_grad():
                    x = flow.reverse(y)  # this step's input, rebuilt from its output
                wanted = [p for p, w in zip(params, need) if w]
                with torch.enable_grad():
                    x = x.detach().requires_grad_(x_wanted)
                    out, det = flow(x)
                    inputs = ([x] if x_wanted else []) + wanted
                    # det is a constant where no unfrozen parameter reaches the step's logdet
                    used = [(t, g) for t, g in ((out, grad_out), (det, grad_logdet))
                            if t.requires_grad]
                    grads = torch.autograd.grad([t for t, _ in used], inputs,
                                                [g for _, g in used], allow_unused=True)
                if x_wanted:
                    grad_out, grads = grads[0], grads[1:]
                by_param = dict(zip(wanted, grads))
            param_grads.append([by_param.get(p) if w else None for p, w in zip(params, need)])
            y = x.detach()
        ordered = [g for step in reversed(param_grads) for g in step]
        return (grad_out if need_x else None, None, *ordered)


def flows_without_activations(flows, x):
    """(y, logdet) of the flow steps applied in order, keeping no activations for the backward.

    Gradients equal the standard ones up to the rounding of rebuilding each input through the
    inverse. Under torch.no_grad it is simply the plain loop.
    """
    params = [p for flow in flows for p in flow.parameters()]
    if not torch.is_grad_enabled():
        out, logdet = x, x.new_zeros(x.shape[0])
        for flow in flows:
            out, det = flow(out)
            logdet = logdet + det
        return out, logdet
    return _FlowsWithoutActivations.apply(x, list(flows), *params)
