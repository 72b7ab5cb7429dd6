"""Completions drawn from the posterior over latents given the observed pixels, by MALA.

Invert's objective, mean over the M observed values of (Φ⁻¹(z) − x)² + γ·‖z‖²/D, is 2γ/D times

    U(z) = Σ_observed (Φ⁻¹(z) − x)² / 2σ²  +  ½·‖z‖² / t²,    σ² = γ·M / D,  t = 1,

so invert's completion is the MAP of p(z | observed) ∝ exp(−U(z)): a prior N(0, t²·I) on the latent
and Gaussian noise of variance σ² on each observed value (M counts pixels × channels, per image;
D is the latent's size). Sampling exp(−U) instead of minimising it gives completions whose spread
is the model's uncertainty under that noise model, which restarts of an optimiser do not. The
temperature t scales the prior only. This is the posterior of that observation model, not the
flow's own conditional density p(x_hole | x_observed), which would also weigh each completion by
the flow's Jacobian.

The sampler is the Metropolis-adjusted Langevin algorithm: a gradient step plus noise, then an
accept/reject step that makes exp(−U) its exact stationary distribution. n chains per image run
side by side. Each chain adapts its own step size during warm-up (dual averaging, Hoffman & Gelman
2014) toward acceptance 0.574, the optimum for MALA (Roberts & Rosenthal 1998), then keeps it fixed
for the kept steps, so those come from one valid kernel. Only `model.decode` (and `model.encode`
to start from images) is used; model parameters get no gradients.
"""

from typing import NamedTuple

import torch

from ..errors import UserError
from .invert import harmonic_fill

TARGET_ACCEPTANCE = 0.574
# dual averaging's constants as Hoffman & Gelman (2014) and Stan use them
_SHRINKAGE, _OFFSET, _DECAY = 0.05, 10.0, 0.75
_FIRST_STEP_TRIES = 40  # doublings or halvings when looking for a first step size


class Diagnostics(NamedTuple):
    """What a run of chains says about itself; (n, B) per chain unless stated."""

    acceptance: torch.Tensor  # share of the kept steps accepted (NaN with steps = 0)
    step_size: torch.Tensor  # the fixed step size of the kept steps
    latent: torch.Tensor  # (n, B, D) each chain's last state (to go on from it)
    noise_variance: torch.Tensor  # (B,) σ² of each image's observation model


def noise_variance(gamma, observed_values, dim):
    """σ² = γ·M/D: the observation noise for which U's MAP is invert's optimum at weight γ."""
    return gamma * observed_values.clamp_min(1) / dim


def energy(model, z, x, observed, sigma2, temperature):
    """U per chain: Σ over observed values of (decode(z) − x)² / 2σ² + ½‖z‖² / t²."""
    fit = ((model.decode(z) - x) ** 2 * observed).sum((1, 2, 3))
    return fit / (2 * sigma2) + 0.5 * (z * z).sum(1) / temperature**2


@torch.enable_grad()  # callers may run under no_grad; the Langevin step needs ∇U
def posterior_samples(
    model,
    x,
    missing,
    n,
    *,
    gamma,
    temperature=1.0,
    steps,
    warmup,
    generator,
    start=None,
    step_size=None,
    on_step=None,
):
    """Draw n completions per image of x (B, C, S, S) in model space, `missing` (B, 1, S, S).

    Returns (completions (n, B, C, S, S) with every observed pixel exactly as in x, Diagnostics).
    Each completion is one chain's state after `warmup` adapting steps and `steps` kept steps; a
    chain whose start decodes to non-finite pixels gives NaN (a UserError when every one does).

    start: None (every chain starts at the latent of x with its hole filled smoothly), a latent
    (B, D) or (n, B, D) such as invert's MAP latent, or images (B, C, S, S) or (n, B, C, S, S) to
    encode. step_size: the first step size, a number or (n, B) (None: found per chain by doubling
    or halving from t² until one proposal's acceptance crosses one half); with warmup = 0 it is
    the kernel's step size, and a start drawn from the posterior stays so. `on_step(i)` is called
    after each of the warmup + steps steps.
    """
    if gamma <= 0:
        raise UserError(f"gamma must be positive (it sets the observation noise), not {gamma}")
    if temperature <= 0:
        raise UserError(f"temperature must be positive, not {temperature}")
    if n < 1 or steps < 0 or warmup < 0:
        raise UserError(
            f"need at least one chain and no negative step counts (n={n}, "
            f"steps={steps}, warmup={warmup})"
        )
    b = x.shape[0]
    observed = (~missing).to(x.dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        z = _start(model, x, missing, n, start).detach()
        xs, obs = x.repeat(n, 1, 1, 1), observed.repeat(n, 1, 1, 1)
        sigma2 = noise_variance(gamma, observed.expand_as(x).sum((1, 2, 3)), z.shape[1])

        def target(z):
            z = z.detach().requires_grad_(True)
            u = energy(model, z, xs, obs, sigma2.repeat(n), temperature)
            (g,) = torch.autograd.grad(u.sum(), z)
            return u.detach(), g

        # a chain whose start decodes to non-finite pixels (an image the inversion failed on)
        # runs from the latent 0 instead and gives back NaN, counted by callers as non-finite:
        # one such image never stops the others
        chain = _Chain(target, z, generator)
        failed = ~torch.isfinite(chain.u)
        if failed.all():
            raise UserError("the start decodes to non-finite pixels; start from other latents")
        if failed.any():
            chain = _Chain(
                target, torch.where(failed.unsqueeze(1), torch.zeros_like(z), z), generator
            )
            failed |= ~torch.isfinite(chain.u)
        if step_size is None:
            eps = chain.first_step_size(temperature**2)
        else:
            eps = torch.as_tensor(step_size, dtype=z.dtype).to(z.device)
            eps = eps.reshape(-1).expand(n * b).clone() if eps.numel() in (1, n * b) else None
            if eps is None or not (eps > 0).all():
                raise UserError(f"step_size must be positive, one number or (n, B) = ({n}, {b})")
        adapt = _DualAveraging(eps)
        for i in range(warmup):
            eps = adapt.update(chain.step(eps)[0])
            if on_step is not None:
                on_step(i)
        if warmup:
            eps = adapt.final()
        accepted = torch.zeros_like(eps)
        for i in range(steps):
            accepted += chain.step(eps)[1]
            if on_step is not None:
                on_step(warmup + i)
        with torch.no_grad():
            out = model.decode(chain.z)
    finally:
        for p in params:
            p.requires_grad_(True)
    out = torch.where(missing.repeat(n, 1, 1, 1), out, xs)
    out[failed] = float("nan")
    rate = accepted / steps if steps else torch.full_like(eps, float("nan"))
    diagnostics = Diagnostics(rate.view(n, b), eps.view(n, b), chain.z.view(n, b, -1), sigma2)
    return out.view(n, b, *x.shape[1:]), diagnostics


def _start(model, x, missing, n, start):
    """The chains' first latents, (n·B, D), chains of sample k at rows k·B … k·B + B − 1."""
    b = x.shape[0]
    if start is None:
        start = harmonic_fill(x, missing)
    if start.dim() in (4, 5):
        images = start if start.dim() == 5 else start.unsqueeze(0)
        if images.shape[1:] != x.shape or images.shape[0] not in (1, n):
            raise ValueError(
                f"start images must be (B, C, S, S) or (n, B, C, S, S) like x, "
                f"not {tuple(start.shape)}"
            )
        with torch.no_grad():
            start = model.encode(images.flatten(0, 1)).view(images.shape[0], b, -1)
    elif start.dim() == 2:
        start = start.unsqueeze(0)
    if start.dim() != 3 or start.shape[1] != b or start.shape[0] not in (1, n):
        raise ValueError(f"start latents must be (B, D) or (n, B, D), not {tuple(start.shape)}")
    return start.expand(n, -1, -1).reshape(n * b, -1).to(x.dtype)


class _Chain:
    """MALA chains: z, U(z) and ∇U(z) per chain, one kernel step at a time."""

    def __init__(self, target, z, generator):
        self.target, self.z, self.generator = target, z, generator
        self.u, self.g = target(z)

    def _normal(self):
        return torch.randn(self.z.shape, generator=self.generator, dtype=self.z.dtype).to(
            self.z.device
        )

    def _propose(self, eps, noise):
        """(proposal, U, ∇U, acceptance probability) of a Langevin step from the current state."""
        e = eps.unsqueeze(1)
        z = self.z - e * self.g + (2 * e).sqrt() * noise
        u, g = self.target(z)
        back = self.z - z + e * g  # the reverse move's drift-corrected displacement
        log_ratio = self.u - u - (back * back).sum(1) / (4 * eps) + 0.5 * (noise * noise).sum(1)
        ok = torch.isfinite(log_ratio) & torch.isfinite(g).all(1)
        accept = torch.where(ok, log_ratio.clamp(max=0).exp(), torch.zeros_like(log_ratio))
        return z, u, g, accept

    def step(self, eps):
        """One kernel step of every chain: (acceptance probability, accepted 0/1)."""
        z, u, g, prob = self._propose(eps, self._normal())
        uniform = torch.rand(prob.shape, generator=self.generator, dtype=prob.dtype).to(prob.device)
        take = uniform < prob
        self.z = torch.where(take.unsqueeze(1), z, self.z)
        self.u = torch.where(take, u, self.u)
        self.g = torch.where(take.unsqueeze(1), g, self.g)
        return prob, take.to(prob.dtype)

    def first_step_size(self, eps0):
        """Per chain: double or halve eps0 until one proposal's acceptance probability crosses
        one half (Hoffman & Gelman's heuristic), without moving the chain."""
        noise = self._normal()
        eps = torch.full_like(self.u, float(eps0))
        up = self._propose(eps, noise)[3] > 0.5
        searching = torch.ones_like(up)
        factor = torch.where(up, 2.0, 0.5).to(eps.dtype)
        for _ in range(_FIRST_STEP_TRIES):
            trial = torch.where(searching, eps * factor, eps)
            crossed = (self._propose(trial, noise)[3] > 0.5) != up
            # going up, stop before the step that fails; going down, at the first that passes
            eps = torch.where(searching & ~(crossed & up), trial, eps)
            searching = searching & ~crossed
            if not searching.any():
                break
        return eps


class _DualAveraging:
    """Per-chain step sizes driven toward TARGET_ACCEPTANCE (Hoffman & Gelman 2014, §3.2.1)."""

    def __init__(self, eps):
        self.mu = (10 * eps).log()
        self.h = torch.zeros_like(eps)
        self.log_bar = torch.zeros_like(eps)
        self.m = 0

    def update(self, prob):
        """The next step sizes after a step whose acceptance probabilities were `prob`."""
        self.m += 1
        m = self.m
        self.h = (1 - 1 / (m + _OFFSET)) * self.h + (TARGET_ACCEPTANCE - prob) / (m + _OFFSET)
        log_eps = self.mu - m**0.5 / _SHRINKAGE * self.h
        weight = m**-_DECAY
        self.log_bar = weight * log_eps + (1 - weight) * self.log_bar
        return log_eps.exp()

    def final(self):
        """The averaged step size, kept fixed after warm-up."""
        return self.log_bar.exp()
