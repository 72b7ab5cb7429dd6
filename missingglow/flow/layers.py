"""The Glow layers in pure PyTorch: the ground truth the fused step is tested and benchmarked on.

Conventions follow rosinality/glow-pytorch (docs/conventions.md §1), the code behind the paper's
numbers, and the module and parameter names match its checkpoint keys so that its state dicts load
as they are. Each layer is one small class whose `forward(x)` returns `(y, logdet)` with a
per-sample logdet of shape (N,), and whose `reverse(y)` undoes it. The coupling's and the
zero-conv's math is the reference ops' (ops_reference.py), so a layer and the fast op that
replaces it in fused_step.py compute one formula.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from .ops_reference import coupling_step, coupling_step_inverse, zero_conv


class ActNorm(nn.Module):
    """Per-channel affine y = scale·(x + loc), initialised from the first batch it sees.

    The first batch sets loc = −mean and scale = 1/(std + 1e-6) per channel, so each channel starts
    out standardised; the `initialized` buffer is saved with the checkpoint so a loaded model is not
    re-initialised.
    """

    def __init__(self, channels):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x):
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.loc.copy_(-flat.mean(1).view_as(self.loc))
        self.scale.copy_(1 / (flat.std(1).view_as(self.scale) + 1e-6))
        self.initialized.fill_(1)

    def logdet(self, x):
        h, w = x.shape[2:]
        return (h * w * torch.log(torch.abs(self.scale)).sum()).expand(x.shape[0])

    def forward(self, x):
        if self.initialized.item() == 0:
            self.initialize(x)
        return self.scale * (x + self.loc), self.logdet(x)

    def reverse(self, y):
        return y / self.scale - self.loc


class InvConv2d(nn.Module):
    """Invertible 1×1 convolution with a full weight matrix; logdet through slogdet."""

    def __init__(self, channels):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q.view(channels, channels, 1, 1))

    def matrix(self):
        return self.weight.view(self.weight.shape[:2])

    def forward(self, x):
        h, w = x.shape[2:]
        logdet = h * w * torch.linalg.slogdet(self.matrix())[1]
        return F.conv2d(x, self.weight), logdet.expand(x.shape[0])

    def reverse(self, y):
        w_inv = torch.linalg.inv(self.matrix())
        return F.conv2d(y, w_inv.view(*w_inv.shape, 1, 1))


class InvConv2dLU(nn.Module):
    """Invertible 1×1 convolution in LU form, W = P·(L + I)·(U + diag(sign·exp(w_s))).

    The log-determinant is then just H·W·Σ w_s, with no O(C³) decomposition per step.
    """

    def __init__(self, channels):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        u_mask = torch.triu(torch.ones(channels, channels), 1)
        self.register_buffer("w_p", p)
        self.register_buffer("u_mask", u_mask)
        self.register_buffer("l_mask", u_mask.T.contiguous())
        self.register_buffer("s_sign", torch.sign(diag))
        self.register_buffer("l_eye", torch.eye(channels))
        self.w_l = nn.Parameter(lower)
        self.w_s = nn.Parameter(torch.log(torch.abs(diag)))
        self.w_u = nn.Parameter(torch.triu(upper, 1))

    def matrix(self):
        lower = self.w_l * self.l_mask + self.l_eye
        upper = self.w_u * self.u_mask + torch.diag(self.s_sign * torch.exp(self.w_s))
        return self.w_p @ lower @ upper

    def forward(self, x):
        h, w = x.shape[2:]
        weight = self.matrix()
        out = F.conv2d(x, weight.view(*weight.shape, 1, 1))
        return out, (h * w * self.w_s.sum()).expand(x.shape[0])

    def reverse(self, y):
        w_inv = torch.linalg.inv(self.matrix())
        return F.conv2d(y, w_inv.view(*w_inv.shape, 1, 1))


class ZeroConv2d(nn.Module):
    """3×3 convolution padded with ones, zero-initialised, output scaled by exp(3·scale).

    Starting at zero makes every coupling the identity and every prior N(0, I) at initialisation.
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=0)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x):
        return zero_conv(x, self.conv.weight, self.conv.bias, self.scale)


class AffineCoupling(nn.Module):
    """x_a passes through; x_b is shifted and scaled by a network of x_a (additive: only shifted).

    Affine: the network's output h = [log_s, t] gives y_b = (x_b + t)·sigmoid(log_s + 2), as
    rosinality's code has it (ops_reference.coupling_step).
    """

    def __init__(self, channels, hidden=512, affine=True):
        super().__init__()
        self.affine = affine
        self.net = nn.Sequential(
            nn.Conv2d(channels // 2, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, channels if affine else channels // 2),
        )
        for conv in (self.net[0], self.net[2]):
            conv.weight.data.normal_(0, 0.05)
            conv.bias.data.zero_()

    def forward(self, x):
        x_a, x_b = x.chunk(2, 1)
        if self.affine:
            return coupling_step(x, self.net(x_a))
        return torch.cat([x_a, x_b + self.net(x_a)], 1), x.new_zeros(x.shape[0])

    def reverse(self, y):
        y_a, y_b = y.chunk(2, 1)
        if self.affine:
            return coupling_step_inverse(y, self.net(y_a))[0]
        return torch.cat([y_a, y_b - self.net(y_a)], 1)


class FlowStep(nn.Module):
    """One Glow step: ActNorm → invertible 1×1 conv → coupling."""

    def __init__(self, channels, hidden=512, affine=True, lu=True):
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv2dLU(channels) if lu else InvConv2d(channels)
        self.coupling = AffineCoupling(channels, hidden, affine)

    def forward(self, x):
        out, logdet = self.actnorm(x)
        out, det_conv = self.invconv(out)
        out, det_coupling = self.coupling(out)
        return out, logdet + det_conv + det_coupling

    def reverse(self, y):
        return self.actnorm.reverse(self.invconv.reverse(self.coupling.reverse(y)))


# --- the multi-scale architecture's reshapes and priors ------------------------------------------


def squeeze2x2(x):
    """(N, C, H, W) → (N, 4C, H/2, W/2), channel c·4 + 2·dy + dx holding pixel (2h+dy, 2w+dx)."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, c * 4, h // 2, w // 2)


def unsqueeze2x2(x):
    """Inverse of squeeze2x2."""
    n, c, h, w = x.shape
    x = x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, h * 2, w * 2)


def gaussian_log_p(x, mean, log_sd):
    """Elementwise log N(x; mean, exp(log_sd)²)."""
    return -0.5 * math.log(2 * math.pi) - log_sd - 0.5 * (x - mean) ** 2 * torch.exp(-2 * log_sd)
