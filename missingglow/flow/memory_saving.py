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
        param_grads = []
        for flow in reversed(ctx.flows):
            params = list(flow.parameters())
            if isinstance(flow, FusedFlowStep):
                x, grad_out, by_param = flow.backward_from_output(y, grad_out, grad_logdet)
            else:
                with torch.no_grad():
                    x = flow.reverse(y)  # this step's input, rebuilt from its output
                with torch.enable_grad():
                    x = x.detach().requires_grad_()
                    out, det = flow(x)
                    wanted = [p for p in params if p.requires_grad]
                    grads = torch.autograd.grad((out, det), [x] + wanted, (grad_out, grad_logdet),
                                                allow_unused=True)
                grad_out, by_param = grads[0], dict(zip(wanted, grads[1:]))
            param_grads.append([by_param.get(p) for p in params])
            y = x.detach()
        ordered = [g for step in reversed(param_grads) for g in step]
        return (grad_out, None, *ordered)


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
