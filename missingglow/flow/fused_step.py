"""The Glow flow step on the fast ops (ops.py), with the same parameters as layers.FlowStep.

`FusedFlowStep` is a `layers.FlowStep` (same modules, parameter names and state-dict keys, so
checkpoints move freely between the two) whose forward and reverse run:

    ActNorm + 1×1 conv   one GEMM, ActNorm folded into the weights and bias, which also
                         hands the coupling network its half    ops.channel_gemm_split
    coupling network     ATen's conv2d, channels-last, the zero-conv's pad-with-1 replaced by a
                         precomputed border and its exp(3·scale) folded into the weights
                         (`zero_conv`, `coupling_net` below)
    affine coupling      one pass over the whole tensor                        ops.coupling_step

The tensors that depend on parameters alone (the GEMM's folded weights, the zero-conv's, the
logdets of ActNorm and the 1×1 conv) are computed for all of a block's steps at once
(step_params.py): `run_steps` and `reverse_steps` run a list of steps that way, and a step alone
is a list of one. Activations stay channels-last from step to step (the layout ATen's CPU
convolutions run fastest in); the values are the reference's, only the strides differ.

`precision="bf16"` runs the coupling network's two hidden convolutions in bfloat16; the
zero-conv, the coupling, the 1×1 conv and every logdet stay in the model's dtype. The inverse
computes the network on the same half the forward saw, so it stays exact up to that rounding.

Through the C++ driver (`FusedFlowStep.driver = True`, off by default on every device) an affine
float step runs as one op driven from C++ (ops.flow_step, csrc/flow_step.cpp), forward and
inverse, with the 1×1 conv's matrix and the logdets from the batched pass. It is opt-in because
it still folds its parameters per step, so it dispatches more kernels per step than the ops one by
one with their folds done once per block, and with training one CUDA graph the kernel count, not
the host's dispatch, should set a GPU step's pace (unmeasured on a GPU: bench/RESULTS.md).
Additive steps, bf16 steps and memory-saving training's backward always use the ops one by one.
"""

import torch
from torch.nn import functional as F

from . import ops
from .layers import FlowStep
from .step_params import PRECISIONS, prepare_steps


def zero_conv(x, weight, bias, scale):
    """ops_reference.zero_conv (ZeroConv2d) without the padded copy of x.

    conv(pad_1(x))·e with e = exp(3·scale) equals conv_0(x; W·e, b·e) + border, where conv_0 pads
    with zeros and border (1, C_out, H, W) is what the ones of the padding contribute: the conv
    of a ones-padded zero image, computed on one channel with the weights summed over inputs.
    """
    gain = torch.exp(scale * 3).reshape(-1)
    weight = weight * gain[:, None, None, None]
    out = F.conv2d(x, weight, bias * gain, padding=1)
    frame = F.pad(x.new_zeros(1, 1, x.shape[2], x.shape[3]), [1, 1, 1, 1], value=1)
    return out + F.conv2d(frame, weight.sum(1, keepdim=True))


def coupling_net(x_a, w1, b1, w2, b2, w3, b3, s3):
    """AffineCoupling's network conv3x3 → ReLU → conv1x1 → ReLU → ZeroConv2d, with `zero_conv`
    above (ops_reference.coupling_net gives the same values)."""
    hidden = F.relu(F.conv2d(x_a, w1, b1, padding=1), inplace=True)
    hidden = F.relu(F.conv2d(hidden, w2, b2), inplace=True)
    return zero_conv(hidden, w3, b3, s3)


def coupling_net_params(coupling):
    """The coupling network's (w1, b1, w2, b2, w3, b3, s3), in the order the ops take them."""
    net = coupling.net
    return (
        net[0].weight,
        net[0].bias,
        net[2].weight,
        net[2].bias,
        net[4].conv.weight,
        net[4].conv.bias,
        net[4].scale,
    )


def channel_gemm(x, weight, bias):
    """x·weight + bias over the channels of a channels-last (N, C, H, W) x: ActNorm and the 1×1
    conv (or their inverses) as one GEMM with the weights folded once per block
    (step_params.StepParams). The result is channels-last. The training forward runs it as
    ops.channel_gemm_split instead, whose backward is one node."""
    n, c, height, width = x.shape
    out = torch.addmm(bias, x.permute(0, 2, 3, 1).reshape(-1, c), weight)
    return out.view(n, height, width, c).permute(0, 3, 1, 2)


def prepared_coupling_net(x_a, params):
    """The coupling network on x_a from a step's StepParams: the hidden convs in their compute
    dtype (x_a is copied dense and cast in one go), the zero-conv in x_a's."""
    dtype, cl = x_a.dtype, torch.channels_last
    # x_a is a slice: copied dense (`to` with an unchanged dtype would return the slice itself)
    x_a = (
        x_a.contiguous(memory_format=cl)
        if dtype == params.w1.dtype
        else x_a.to(params.w1.dtype, memory_format=cl)
    )
    hidden = F.relu(F.conv2d(x_a, params.w1, params.b1, padding=1), inplace=True)
    hidden = F.relu(F.conv2d(hidden, params.w2, params.b2), inplace=True)
    return F.conv2d(hidden.to(dtype), params.w3, None, padding=1).add_(params.border)


class FusedFlowStep(FlowStep):
    """layers.FlowStep computed with the fast ops (see the module docstring).

    `driver` (a class attribute; set it on an instance to change one step) picks how an affine
    float step runs: True, the whole step as one op driven from C++ (ops.flow_step,
    csrc/flow_step.cpp); False (the default, on every device), the ops above called one by one
    from Python; None on an instance, the class's setting. Same values either way.
    """

    driver = False

    def __init__(self, channels, hidden=512, affine=True, lu=True, precision="fp32"):
        super().__init__(channels, hidden, affine, lu)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        # 3×3 weights stored channels-last, the layout the channels-last activations convolve
        # with: a contiguous weight is copied on each call and its gradient copied back. The
        # layout survives .to(), .double() and load_state_dict (which copies into it).
        for conv in (self.coupling.net[0], self.coupling.net[4].conv):
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
        # ActNorm's `initialized` flag is read once, not every call: `.item()` would split a
        # torch.compile graph. Loading a state dict may clear the flag, so it is read again then.
        self._initialized_seen = False
        self._register_load_state_dict_pre_hook(self._forget_initialized)

    def _forget_initialized(self, *args, **kwargs):
        self._initialized_seen = False

    def _initialized(self):
        """Whether ActNorm has been initialised, its flag read until it says so."""
        if not self._initialized_seen:
            self._initialized_seen = bool(self.actnorm.initialized.item())
        return self._initialized_seen

    @classmethod
    def driver_for(cls, device, driver=None):
        """Whether `driver` (default: the class's) means the C++ driver for tensors on `device`.
        The same on every device: `device` stays for callers that ask per device (bench/flows.py),
        so a per-device default could return without changing them."""
        driver = cls.driver if driver is None else driver
        return bool(driver)

    def uses_driver(self, device):
        """Whether this step runs tensors on `device` through the C++ driver (see `driver`)."""
        return (
            self.driver_for(device, self.driver)
            and self.coupling.affine
            and self.precision == "fp32"
        )

    def forward(self, x):
        return run_steps([self], x)

    def reverse(self, y):
        return reverse_steps([self], y)

    def forward_prepared(self, x, params):
        """(y, the coupling's logdet or None when additive) of channels-last x, from this step's
        StepParams: ActNorm's and the 1×1 conv's logdets are the caller's."""
        if self.uses_driver(x.device):
            return ops.flow_step(
                x,
                self.actnorm.loc,
                self.actnorm.scale,
                params.matrix,
                *coupling_net_params(self.coupling),
            )
        out, out_a = ops.channel_gemm_split(x, params.gemm_weight, params.gemm_bias)
        h = prepared_coupling_net(out_a, params)
        if self.coupling.affine:
            return ops.coupling_step(out, h)
        half = out.shape[1] // 2
        return _channels_last(torch.cat([out[:, :half], out[:, half:] + h], 1)), None

    def reverse_prepared(self, y, params):
        """This step's input from its channels-last output y, from its inverse StepParams."""
        if self.uses_driver(y.device):
            return ops.flow_step_inverse(
                y,
                self.actnorm.loc,
                self.actnorm.scale,
                params.matrix,
                *coupling_net_params(self.coupling),
            )[0]
        h = prepared_coupling_net(y[:, : y.shape[1] // 2], params)
        return channel_gemm(self._coupling_inverse(y, h), params.gemm_weight, params.gemm_bias)

    def _coupling_inverse(self, y, h):
        if self.coupling.affine:
            return ops.coupling_step_inverse(y, h)[0]
        half = y.shape[1] // 2
        return _channels_last(torch.cat([y[:, :half], y[:, half:] - h], 1))

    def backward_from_output(self, y, grad_y, grad_logdet, params, inverse_params, need_x=True):
        """Rebuild this step's input x from its output y and backprop through the step.

        `params` are this step's forward StepParams as leaves (the caller takes their gradients
        back through the batched pass), `inverse_params` its inverse ones. Returns (x, grad_x or
        None when not `need_x`, {name of a StepParams field: its gradient}). The coupling
        network runs once, on y_a (which is the half it saw in the forward): its output serves
        both the inverse and the gradients, and the coupling's backward needs only y.
        """
        y = _channels_last(y.detach())
        half = y.shape[1] // 2
        with torch.enable_grad():
            y_a = y[:, :half].detach().requires_grad_()
            h = prepared_coupling_net(y_a, params)
        with torch.no_grad():
            if self.coupling.affine:
                grad_out, grad_h = ops.coupling_step_backward(grad_y, grad_logdet, y, h.detach())
            else:
                grad_out = grad_y.clone(memory_format=torch.channels_last)
                grad_h = grad_out[:, half:]
            x = channel_gemm(
                self._coupling_inverse(y, h.detach()),
                inverse_params.gemm_weight,
                inverse_params.gemm_bias,
            )
        net = [name for name in _NETWORK_FIELDS if getattr(params, name).requires_grad]
        grads = torch.autograd.grad(h, [y_a] + [getattr(params, name) for name in net], grad_h)
        result = dict(zip(net, grads[1:], strict=True))
        grad_out[:, :half] += grads[0]
        # out = x·A + b over channels (channel_gemm), A and b the folded ActNorm and 1×1 conv
        c = y.shape[1]
        grad_flat = grad_out.permute(0, 2, 3, 1).reshape(-1, c)
        weight = params.gemm_weight
        if weight.requires_grad:
            result["gemm_weight"] = x.permute(0, 2, 3, 1).reshape(-1, c).T @ grad_flat
        if params.gemm_bias.requires_grad:
            result["gemm_bias"] = grad_flat.sum(0)
        grad_x = None
        if need_x:
            grad_x = (grad_flat @ weight.detach().T).view(y.shape[0], *y.shape[2:], c)
            grad_x = grad_x.permute(0, 3, 1, 2)
        return x, grad_x, result


_NETWORK_FIELDS = ("w1", "b1", "w2", "b2", "w3", "border")  # StepParams' coupling network


def run_steps(steps, x):
    """(y, logdet (N,)) of fused flow steps applied in order, their parameter-only work done once
    for all of them (step_params.py). The first batch initialises each ActNorm from the data it
    sees, step by step."""
    out = _channels_last(x)
    if not all([step._initialized() for step in steps]):
        logdet = x.new_zeros(x.shape[0])
        for step in steps:
            if not step._initialized():
                step.actnorm.initialize(out)
                step._initialized_seen = True
            out, det = run_steps([step], out)
            logdet = logdet + det
        return out, logdet
    params = prepare_steps(steps, x.shape[2], x.shape[3])
    dets = []
    for step, step_params in zip(steps, params.steps, strict=True):
        out, det = step.forward_prepared(out, step_params)
        if det is not None:
            dets.append(det)
    if not dets:
        return out, params.logdet.expand(x.shape[0])
    coupling = dets[0] if len(dets) == 1 else torch.stack(dets, 1).sum(1)
    return out, coupling + params.logdet


def reverse_steps(steps, y):
    """The input of fused flow steps from their output: each step's inverse, last step first."""
    params = prepare_steps(steps, y.shape[2], y.shape[3], inverse=True)
    out = _channels_last(y)
    for step, step_params in zip(reversed(steps), reversed(params.steps), strict=True):
        out = step.reverse_prepared(out, step_params)
    return out


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
