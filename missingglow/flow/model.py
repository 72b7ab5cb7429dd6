"""Glow: multi-scale blocks of flow steps with learned priors, and the latent Φ
(docs/conventions.md §2).

Φ(x) is the list of standardised latents ε_i = (z_i − mean_i)/exp(log_sd_i), one per level,
flattened in (C, H, W) order and concatenated from the first split to the last block. Sampling,
imputation and the latent-norm study all work in this space, where the data should look N(0, I).
"""

import warnings
from typing import NamedTuple

import torch
from torch import nn

from . import ops
from .fused_step import FusedFlowStep, reverse_steps, run_steps
from .layers import FlowStep, ZeroConv2d, gaussian_log_p, squeeze2x2, unsqueeze2x2
from .memory_saving import flows_without_activations
from .step_params import PRECISIONS

LATENTS = ("standardised", "raw")
IMPLS = ("fused", "reference")


def resolve_impl(impl):
    """ "fused" when the compiled ops loaded (the default), else "reference" with one warning."""
    if impl is None:
        impl = "fused"
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "fused" and not ops.AVAILABLE:
        warnings.warn(
            f"fused ops unavailable, running the pure-PyTorch reference: {ops.WHY_UNAVAILABLE}",
            RuntimeWarning,
            stacklevel=3,
        )
        impl = "reference"
    return impl


class Block(nn.Module):
    """Squeeze 2×2, `flows` steps, then split off half the channels under a learned Gaussian prior.

    The last block does not split: its whole output is the latent, and its prior is the same
    zero-initialised conv applied to zeros (a learned constant mean and scale). Fused steps do
    their parameter-only work once for the whole block (flow/step_params.py), and run their
    coupling network's hidden convolutions in `precision` ("fp32" or "bf16"); reference steps are
    each computed on their own, in the model's dtype.
    """

    def __init__(
        self,
        in_channels,
        flows,
        hidden,
        affine,
        lu,
        split,
        impl="reference",
        memory_saving=False,
        precision="fp32",
    ):
        super().__init__()
        channels = in_channels * 4
        self.split = split
        self.memory_saving = memory_saving
        self.fused = resolve_impl(impl) == "fused"
        if self.fused:
            self.flows = nn.ModuleList(
                FusedFlowStep(channels, hidden, affine, lu, precision) for _ in range(flows)
            )
        else:
            self.flows = nn.ModuleList(FlowStep(channels, hidden, affine, lu) for _ in range(flows))
        if split:
            self.prior = ZeroConv2d(in_channels * 2, in_channels * 4)
        else:
            self.prior = ZeroConv2d(in_channels * 4, in_channels * 8)

    def prior_params(self, kept):
        """mean, log_sd of this level's latent given the half that goes on (zeros for the last)."""
        context = kept if self.split else torch.zeros_like(kept)
        return self.prior(context).chunk(2, 1)

    def forward(self, x):
        """x → (kept half or None, logdet (N,), log_p (N,), z, ε)."""
        out = squeeze2x2(x)
        if self.memory_saving:
            out, logdet = flows_without_activations(self.flows, out)
        elif self.fused:
            out, logdet = run_steps(list(self.flows), out)
        else:
            logdet = x.new_zeros(x.shape[0])
            for flow in self.flows:
                out, det = flow(out)
                logdet = logdet + det
        if self.split:
            out, z = out.chunk(2, 1)
            mean, log_sd = self.prior_params(out)
        else:
            z = out
            mean, log_sd = self.prior_params(out)
            out = None
        log_p = gaussian_log_p(z, mean, log_sd).flatten(1).sum(1)
        eps = (z - mean) * torch.exp(-log_sd)
        return out, logdet, log_p, z, eps

    def reverse(self, kept, latent, standardised=True):
        """Rebuild this block's input from the kept half (None in the last block) and its latent."""
        if standardised:
            mean, log_sd = self.prior_params(kept if self.split else latent)
            z = mean + torch.exp(log_sd) * latent
        else:
            z = latent
        out = torch.cat([kept, z], 1) if self.split else z
        if self.fused:
            return unsqueeze2x2(reverse_steps(list(self.flows), out))
        for flow in reversed(self.flows):
            out = flow.reverse(out)
        return unsqueeze2x2(out)


class Encoded(NamedTuple):
    log_p: torch.Tensor  # (N,) Σ log N(z_i; mean_i, sd_i)
    logdet: torch.Tensor  # (N,) log|det ∂z/∂x| of the flow (before standardisation)
    z: list  # raw latents per level
    eps: list  # standardised latents per level


class Glow(nn.Module):
    """Glow (Kingma & Dhariwal 2018) in rosinality/glow-pytorch's conventions
    (docs/conventions.md §1).

    `lu` may be a list with one flag per block: rosinality's code always builds its last block in
    LU form, and `from_rosinality` reproduces that exactly. `impl` picks the flow steps: "fused"
    (flow/fused_step.py, the default when the compiled ops loaded) or "reference" (flow/layers.py,
    pure PyTorch); both have the same parameters and give the same numbers. `memory_saving=True`
    (flow/memory_saving.py) keeps no activations inside the flow for the backward and rebuilds
    them through the inverse instead. `precision="bf16"` runs the fused coupling networks' two
    hidden convolutions in bfloat16 (flow/fused_step.py); everything else, and the reference
    steps, stay in the model's dtype. A config without it (an older checkpoint's) means "fp32".
    """

    def __init__(
        self,
        blocks=4,
        flows=32,
        hidden=512,
        affine=True,
        lu=True,
        in_channels=3,
        image_size=64,
        impl=None,
        memory_saving=False,
        precision="fp32",
    ):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if impl == "reference" and precision != "fp32":
            raise ValueError(
                f"precision {precision!r} runs on the fused steps; the reference is "
                "the full-precision ground truth"
            )
        impl = resolve_impl(impl)
        if impl == "reference" and precision != "fp32":  # the fused ops did not load
            warnings.warn(
                f"precision {precision!r} needs the fused ops: the reference runs "
                "in full precision",
                RuntimeWarning,
                stacklevel=2,
            )
            precision = "fp32"
        lu_per_block = list(lu) if isinstance(lu, (list, tuple)) else [bool(lu)] * blocks
        if len(lu_per_block) != blocks:
            raise ValueError(f"lu has {len(lu_per_block)} flags for {blocks} blocks")
        if image_size % 2**blocks:
            raise ValueError(f"image_size {image_size} is not divisible by 2^blocks = {2**blocks}")
        self.config = dict(
            blocks=blocks,
            flows=flows,
            hidden=hidden,
            affine=affine,
            lu=lu if isinstance(lu, bool) else lu_per_block,
            in_channels=in_channels,
            image_size=image_size,
            impl=impl,
            memory_saving=memory_saving,
            precision=precision,
        )
        self.in_channels = in_channels
        self.image_size = image_size
        self.blocks = nn.ModuleList()
        channels = in_channels
        for i in range(blocks):
            last = i == blocks - 1
            self.blocks.append(
                Block(
                    channels,
                    flows,
                    hidden,
                    affine,
                    lu_per_block[i],
                    split=not last,
                    impl=impl,
                    memory_saving=memory_saving,
                    precision=precision,
                )
            )
            channels *= 2

    # --- shapes -----------------------------------------------------------------------------------

    def latent_shapes(self, image_size=None):
        """(C, H, W) of each level's latent, first split first."""
        size = image_size or self.image_size
        shapes, channels = [], self.in_channels
        for i in range(len(self.blocks)):
            size //= 2
            last = i == len(self.blocks) - 1
            shapes.append((channels * 4, size, size) if last else (channels * 2, size, size))
            channels *= 2
        return shapes

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (N, {self.in_channels}, S, S) images, got {tuple(x.shape)}")
        if x.shape[2] != x.shape[3] or x.shape[2] % 2 ** len(self.blocks):
            raise ValueError(
                f"image side must be square and divisible by {2 ** len(self.blocks)}, "
                f"got {tuple(x.shape[2:])}"
            )

    # --- the flow ---------------------------------------------------------------------------------

    def forward(self, x):
        """Preprocessed continuous x → Encoded(log_p, logdet, z per level, ε per level)."""
        self._check_input(x)
        log_p = logdet = x.new_zeros(x.shape[0])
        zs, epss = [], []
        out = x
        for block in self.blocks:
            out, det, lp, z, eps = block(out)
            logdet, log_p = logdet + det, log_p + lp
            zs.append(z)
            epss.append(eps)
        return Encoded(log_p, logdet, zs, epss)

    def log_prob(self, x):
        """Per-sample natural-log density of preprocessed continuous x, shape (N,)."""
        enc = self(x)
        return enc.log_p + enc.logdet

    def encode(self, x, latent="standardised"):
        """Φ(x) as an (N, D) tensor (or the raw split halves with latent="raw")."""
        _check_latent(latent)
        enc = self(x)
        levels = enc.eps if latent == "standardised" else enc.z
        return torch.cat([level.flatten(1) for level in levels], 1)

    def decode(self, latents, latent="standardised"):
        """Φ⁻¹: an (N, D) latent back to preprocessed images; the image size follows from D."""
        _check_latent(latent)
        size = self._size_for_dim(latents.shape[1])
        levels, start = [], 0
        for shape in self.latent_shapes(size):
            count = shape[0] * shape[1] * shape[2]
            levels.append(latents[:, start : start + count].reshape(-1, *shape))
            start += count
        out = None
        for block, level in zip(reversed(self.blocks), reversed(levels), strict=True):
            out = block.reverse(out, level, standardised=latent == "standardised")
        return out

    def sample(self, n, temperature=0.7, generator=None, image_size=None):
        """n images from ε ~ N(0, t²·I), x = Φ⁻¹(ε)."""
        param = next(self.parameters())
        dim = sum(c * h * w for c, h, w in self.latent_shapes(image_size))
        # draw where the generator lives (a CPU generator keeps samples seeded on any device)
        where = generator.device if generator is not None else param.device
        eps = torch.randn(n, dim, generator=generator, dtype=param.dtype, device=where)
        return self.decode(eps.to(param.device) * temperature)

    def impute(self, x, alpha):
        """x' = Φ⁻¹(α·Φ(x)): shrink the latent toward the centre, where squares are absent."""
        return self.decode(alpha * self.encode(x))

    def _size_for_dim(self, dim):
        size = round((dim / self.in_channels) ** 0.5)
        if self.in_channels * size * size != dim or size % 2 ** len(self.blocks):
            raise ValueError(
                f"a latent of {dim} numbers does not fit {self.in_channels}-channel "
                f"square images for {len(self.blocks)} blocks"
            )
        return size


def _check_latent(latent):
    if latent not in LATENTS:
        raise ValueError(f"latent must be one of {LATENTS}, got {latent!r}")
