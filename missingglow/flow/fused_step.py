"""The Glow flow step on the fast ops (ops.py), with the same parameters as layers.FlowStep.

`FusedFlowStep` is a `layers.FlowStep` (same modules, parameter names and state-dict keys, so
checkpoints move freely between the two) whose forward and reverse run:

    ActNorm + 1×1 conv   one GEMM with folded weights and bias   ops.actnorm_conv
    coupling network     ATen's conv2d, channels-last, the zero-conv's pad-with-1 replaced by a
                         precomputed border bias and its exp(3·scale) folded into the weights
                         (`zero_conv`, `coupling_net` below)
    affine coupling      one pass over the whole tensor          ops.coupling_step

Activations stay channels-last from step to step (the layout ATen's CPU convolutions run fastest
in); the values are the reference's, only the strides differ. Through the C++ driver
(`FusedFlowStep.driver`: by default on CUDA, off on the CPU; bench/RESULTS.md) an affine step
runs all of the above as one op driven from C++ (ops.flow_step, csrc/flow_step.cpp), forward,
inverse and backward; the LU weight matrix and the ActNorm and 1×1 logdets stay in Python.
Additive steps and memory-saving training's backward (memory_saving.py) use the ops one by one.
"""
import torch
from torch.nn import functional as F

from . import ops
from .layers import FlowStep, InvConv2dLU


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
    return (net[0].weight, net[0].bias, net[2].weight, net[2].bias, net[4].conv.weight,
            net[4].conv.bias, net[4].scale)


class FusedFlowStep(FlowStep):
    """layers.FlowStep computed with the fast ops (see the module docstring).

    `driver` (a class attribute; set it on an instance to change one step) picks how an affine
    step runs: True, the whole step as one op driven from C++ (ops.flow_step, csrc/flow_step.cpp);
    False, the ops above called one by one from Python; None (the default), the driver for CUDA
    tensors and the ops one by one on the CPU. Same values either way. A GPU step of this model is
    bound by the host, and the driver takes Python out of it; on the CPU the two paths run alike,
    and an isolated step's backward page-faults more through the driver with glibc's default
    allocator (bench/RESULTS.md).
    """

    driver = None

    def __init__(self, channels, hidden=512, affine=True, lu=True):
        super().__init__(channels, hidden, affine, lu)
        # ActNorm's `initialized` flag is read once, not every call: `.item()` would split a
        # torch.compile graph. Loading a state dict may clear the flag, so it is read again then.
        self._initialized_seen = False
        self._register_load_state_dict_pre_hook(self._forget_initialized)

    def _forget_initialized(self, *args, **kwargs):
        self._initialized_seen = False

    def _ensure_initialized(self, x):
        if not self._initialized_seen:
            if self.actnorm.initialized.item() == 0:
                self.actnorm.initialize(x)
            self._initialized_seen = True

    @classmethod
    def driver_for(cls, device, driver=None):
        """Whether `driver` (default: the class's) means the C++ driver for tensors on `device`."""
        driver = cls.driver if driver is None else driver
        return torch.device(device).type == "cuda" if driver is None else bool(driver)

    def uses_driver(self, device):
        """Whether this step runs tensors on `device` through the C++ driver (see `driver`)."""
        return self.driver_for(device, self.driver) and self.coupling.affine

    def _network(self, x_a):
        """The coupling network on x_a, run as `coupling_net` (same parameters, same values)."""
        return coupling_net(x_a, *coupling_net_params(self.coupling))

    def _weight_and_logdet(self, pixels):
        """The 1×1 conv's (C, C) matrix and the per-image logdet of ActNorm + 1×1 conv."""
        invconv = self.invconv
        if isinstance(invconv, InvConv2dLU):
            weight = invconv.matrix()
            conv_logdet = invconv.w_s.sum()
        else:
            weight = invconv.matrix()
            conv_logdet = torch.linalg.slogdet(weight)[1]
        return weight, pixels * (torch.log(torch.abs(self.actnorm.scale)).sum() + conv_logdet)

    def forward(self, x):
        x = _channels_last(x)
        self._ensure_initialized(x)
        weight, logdet = self._weight_and_logdet(x.shape[2] * x.shape[3])
        if self.uses_driver(x.device):
            out, det_coupling = ops.flow_step(x, self.actnorm.loc, self.actnorm.scale, weight,
                                              *coupling_net_params(self.coupling))
            return out, logdet.expand(x.shape[0]) + det_coupling
        out = ops.actnorm_conv(x, self.actnorm.loc, self.actnorm.scale, weight)
        half = out.shape[1] // 2
        h = self._network(out[:, :half])
        if self.coupling.affine:
            out, det_coupling = ops.coupling_step(out, h)
            return out, logdet.expand(x.shape[0]) + det_coupling
        out = torch.cat([out[:, :half], out[:, half:] + h], 1)
        return _channels_last(out), logdet.expand(x.shape[0])

    def backward_from_output(self, y, grad_y, grad_logdet):
        """Rebuild this step's input x from its output y and backprop through the step.

        Returns (x, grad_x, {parameter: gradient}). The coupling network runs once, on y_a (which
        is the half it saw in the forward): its output serves both the inverse and the gradients,
        and the coupling's backward needs only y. One forward of the network less than rebuilding
        x and running the step again.
        """
        y = _channels_last(y.detach())
        half = y.shape[1] // 2
        actnorm, coupling = self.actnorm, self.coupling
        with torch.enable_grad():
            y_a = y[:, :half].detach().requires_grad_()
            h = self._network(y_a)
            weight, logdet = self._weight_and_logdet(y.shape[2] * y.shape[3])
        with torch.no_grad():
            if coupling.affine:
                out = ops.coupling_step_inverse(y, h.detach())[0]
                grad_out, grad_h = ops.coupling_step_backward(grad_y, grad_logdet, y, h.detach())
            else:
                out = _channels_last(torch.cat([y_a.detach(), y[:, half:] - h.detach()], 1))
                grad_out, grad_h = grad_y, grad_y[:, half:]
            x = ops.actnorm_conv_inverse(out, actnorm.loc, actnorm.scale, weight.detach())
        net_params = [p for p in coupling.parameters() if p.requires_grad]
        grads = torch.autograd.grad(h, [y_a] + net_params, grad_h)
        grad_out = grad_out.clone()
        grad_out[:, :half] += grads[0]
        result = dict(zip(net_params, grads[1:]))
        grad_x, grad_loc, grad_scale, grad_weight = ops.actnorm_conv_backward(
            grad_out, _channels_last(x), actnorm.loc, actnorm.scale, weight.detach())
        lin_params = [p for p in (actnorm.scale, *self.invconv.parameters()) if p.requires_grad]
        # W and the logdet through the LU factors and |scale|, for the parameters that are not
        # frozen (with all of them frozen, neither needs a gradient)
        used = [(t, g) for t, g in ((weight, grad_weight), (logdet, grad_logdet.sum()))
                if t.requires_grad]
        if lin_params and used:
            lin_grads = torch.autograd.grad([t for t, _ in used], lin_params,
                                            [g for _, g in used], allow_unused=True)
            for p, g in zip(lin_params, lin_grads):
                if g is not None:
                    result[p] = g
        if actnorm.loc.requires_grad:
            result[actnorm.loc] = grad_loc
        if actnorm.scale.requires_grad:
            result[actnorm.scale] = result.get(actnorm.scale, 0) + grad_scale
        return x, grad_x, result

    def reverse(self, y):
        y = _channels_last(y)
        if self.uses_driver(y.device):
            return ops.flow_step_inverse(y, self.actnorm.loc, self.actnorm.scale,
                                         self.invconv.matrix(),
                                         *coupling_net_params(self.coupling))[0]
        half = y.shape[1] // 2
        h = self._network(y[:, :half])
        if self.coupling.affine:
            out, _ = ops.coupling_step_inverse(y, h)
        else:
            out = _channels_last(torch.cat([y[:, :half], y[:, half:] - h], 1))
        return ops.actnorm_conv_inverse(out, self.actnorm.loc, self.actnorm.scale,
                                        self.invconv.matrix())


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
