"""MALA samples the posterior it claims: checked on a linear "flow", whose posterior is Gaussian in
closed form.

decode(z) = A·z + b (reshaped to images) with A well conditioned. With the prior N(0, t²·I) and the
observed values y = (A·z + b)_observed + N(0, σ²), the posterior of z is Gaussian with precision
P = I/t² + HᵀH/σ² (H: A's observed rows) and mean P⁻¹·Hᵀ(y − b_observed)/σ². Each chain is
independent, so the n chains' last states are n independent draws: their mean and covariance are
compared with the closed form within Monte-Carlo error (seeded, so every run gives the same
answer).
"""

import math

import pytest
import torch

from missingglow.completion.posterior import TARGET_ACCEPTANCE, noise_variance, posterior_samples
from missingglow.errors import UserError

C, S = 3, 3
D = C * S * S  # 27
GAMMA = 0.1


class LinearFlow(torch.nn.Module):
    """decode(z) = A z + b as (C, S, S) images; encode its exact inverse."""

    def __init__(self, gen):
        super().__init__()
        q1, _ = torch.linalg.qr(torch.randn((D, D), generator=gen, dtype=torch.float64))
        q2, _ = torch.linalg.qr(torch.randn((D, D), generator=gen, dtype=torch.float64))
        singular = torch.linspace(0.7, 1.5, D, dtype=torch.float64)
        self.A = torch.nn.Parameter(q1 @ torch.diag(singular) @ q2)  # condition number ≈ 2
        self.b = torch.nn.Parameter(0.1 * torch.randn(D, generator=gen, dtype=torch.float64))

    def decode(self, z):
        return (z @ self.A.T + self.b).view(-1, C, S, S)

    def encode(self, x):
        return torch.linalg.solve(self.A, (x.flatten(1) - self.b).T).T


def masks():
    """Two images: 2 and 4 of 9 pixels missing (the mask covers every channel)."""
    m = torch.zeros((2, 1, S, S), dtype=torch.bool)
    m[0, 0, 1, 1:] = True
    m[1, 0, :2, :2] = True
    return m


def problem(gen):
    model = LinearFlow(gen)
    with torch.no_grad():
        x = model.decode(torch.randn((2, D), generator=gen, dtype=torch.float64))
    x = x + 0.05 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return model, x, masks()


def closed_form(model, x, missing, temperature=1.0):
    """(mean (B, D), covariance (B, D, D)) of each image's posterior over z."""
    means, covs = [], []
    with torch.no_grad():
        for xi, mi in zip(x, missing, strict=True):
            rows = (~mi).expand(C, S, S).flatten()
            h, y = model.A[rows], xi.flatten()[rows] - model.b[rows]
            sigma2 = noise_variance(GAMMA, rows.sum(), D)
            precision = torch.eye(D, dtype=torch.float64) / temperature**2 + h.T @ h / sigma2
            cov = torch.linalg.inv(precision)
            means.append(cov @ h.T @ y / sigma2)
            covs.append((cov + cov.T) / 2)
    return torch.stack(means), torch.stack(covs)


def assert_draws_of(z, mean, cov, sd=4.5):
    """z (n, B, D): n independent draws per image from N(mean, cov)? Whitened by cov's Cholesky
    factor, the draws must have mean 0 and covariance I within `sd` standard errors."""
    n = z.shape[0]
    for i in range(z.shape[1]):
        white = torch.linalg.solve_triangular(
            torch.linalg.cholesky(cov[i]), (z[:, i] - mean[i]).T, upper=False
        ).T
        assert white.mean(0).abs().max() < sd / math.sqrt(n)
        sample_cov = white.T @ white / n  # the mean is known: no n − 1
        off = sample_cov - torch.diag(sample_cov.diag())
        assert (sample_cov.diag() - 1).abs().max() < sd * math.sqrt(2 / n)
        assert off.abs().max() < sd / math.sqrt(n)


def test_mala_leaves_the_exact_posterior_invariant(gen):
    """Chains started from exact posterior draws, with a fixed step size and no warm-up, are still
    exact draws after 10 kernel steps. The step size is 1/λ_max of the posterior's precision,
    where Langevin without the accept step would double the variance along the stiffest
    direction: this test fails without a correct accept step."""
    model, x, missing = problem(gen)
    mean, cov = closed_form(model, x, missing)
    n = 4000
    start = (
        mean
        + (
            torch.linalg.cholesky(cov)
            @ torch.randn((n, 2, D, 1), generator=gen, dtype=torch.float64)
        )[..., 0]
    )
    stiffest = torch.linalg.eigvalsh(torch.linalg.inv(cov))[:, -1]
    step = (1 / stiffest).expand(n, 2)
    out, info = posterior_samples(
        model,
        x,
        missing,
        n,
        gamma=GAMMA,
        steps=10,
        warmup=0,
        generator=gen,
        start=start,
        step_size=step,
    )
    assert torch.equal(info.step_size, step)
    assert (info.acceptance.mean(0) > 0.3).all() and (info.acceptance.mean(0) < 0.95).all()
    moved = (info.latent - start).norm(dim=2) > 0
    assert moved.double().mean() > 0.9
    assert_draws_of(info.latent, mean, cov)
    with torch.no_grad():  # the completions are the latents decoded, observed pixels pasted back
        decoded = model.decode(info.latent.flatten(0, 1)).view(out.shape)
    assert torch.allclose(out, torch.where(missing, decoded, x))


def test_mala_from_a_bad_start_converges_to_the_closed_form(gen):
    """Every chain starts far out (mean + 8 in every latent coordinate); after warm-up the
    adapted kernel's samples match the posterior's mean and per-coordinate variance. (The
    slowest direction relaxes by about a step size, ≈ 0.02, per step: 1,000 steps in all.)"""
    model, x, missing = problem(gen)
    mean, cov = closed_form(model, x, missing)
    n = 2000
    steps = []
    out, info = posterior_samples(
        model,
        x,
        missing,
        n,
        gamma=GAMMA,
        steps=500,
        warmup=500,
        generator=gen,
        start=mean + 8,
        on_step=steps.append,
    )
    assert steps == list(range(1000))
    acceptance = info.acceptance.mean(0)
    assert ((acceptance - TARGET_ACCEPTANCE).abs() < 0.1).all(), acceptance
    assert (info.step_size.std(0) > 0).all()  # each chain has its own step size
    z = info.latent
    se = (cov.diagonal(dim1=1, dim2=2) / n).sqrt()
    assert ((z.mean(0) - mean).abs() < 4.5 * se).all()
    ratio = z.var(0) / cov.diagonal(dim1=1, dim2=2)
    assert ((ratio - 1).abs() < 4.5 * math.sqrt(2 / n)).all()


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_temperature_scales_the_spread_as_the_closed_form_says(gen, temperature):
    """The hole pixels' variance across completions is (A·Σ_t·Aᵀ)'s diagonal there; the chains
    start from the default (the smoothly filled input, encoded)."""
    model, x, missing = problem(gen)
    mean, cov = closed_form(model, x, missing, temperature)
    n = 1000
    out, info = posterior_samples(
        model,
        x,
        missing,
        n,
        gamma=GAMMA,
        temperature=temperature,
        steps=300,
        warmup=300,
        generator=gen,
    )
    assert_draws_of(info.latent, mean, cov, sd=5)
    with torch.no_grad():
        pixel_var = torch.einsum("ij,bjk,lk->bil", model.A, cov, model.A).diagonal(dim1=1, dim2=2)
    hole = missing.expand(-1, C, -1, -1).flatten(1)
    observed_var = out.flatten(2).var(0)
    ratio = observed_var[hole] / pixel_var[hole]
    assert ((ratio - 1).abs() < 5 * math.sqrt(2 / n)).all()
    _, cold = closed_form(model, x, missing, 0.5)
    _, warm = closed_form(model, x, missing, 1.0)
    assert (cold.diagonal(dim1=1, dim2=2) < warm.diagonal(dim1=1, dim2=2)).all()


def test_observed_pixels_never_change_and_the_model_gets_no_gradients(gen):
    model, x, missing = problem(gen)
    x = x.float()
    model = model.float()
    out, info = posterior_samples(
        model, x, missing, 5, gamma=0.01, steps=5, warmup=5, generator=gen
    )
    observed = (~missing).expand_as(x)
    assert out.shape == (5, 2, C, S, S) and out.dtype == torch.float32
    assert all(torch.equal(o[observed], x[observed]) for o in out)
    assert not torch.equal(out[0][~observed], out[1][~observed])
    assert info.acceptance.shape == info.step_size.shape == (5, 2)
    assert info.latent.shape == (5, 2, D) and info.noise_variance.shape == (2,)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    with torch.no_grad():  # under no_grad (as evaluate calls it) it still samples
        again, _ = posterior_samples(
            model,
            x,
            missing,
            5,
            gamma=0.01,
            steps=5,
            warmup=5,
            generator=torch.Generator().manual_seed(3),
        )
    assert torch.equal(again[0][observed], x[observed])


def test_the_same_generator_gives_the_same_completions(gen):
    model, x, missing = problem(gen)
    runs = [
        posterior_samples(
            model,
            x,
            missing,
            3,
            gamma=GAMMA,
            steps=4,
            warmup=4,
            generator=torch.Generator().manual_seed(11),
        )[0]
        for _ in range(2)
    ]
    assert torch.equal(*runs)


def test_noise_variance_makes_the_map_inverts_optimum(gen):
    """U·2γ/D is invert's objective at t = 1: σ² = γ·M/D, M the observed values."""
    from missingglow.completion.invert import objective
    from missingglow.completion.posterior import energy

    model, x, missing = problem(gen)
    observed = (~missing).double()
    z = torch.randn((2, D), generator=gen, dtype=torch.float64)
    m = observed.expand_as(x).sum((1, 2, 3))
    sigma2 = noise_variance(GAMMA, m, D)
    assert torch.allclose(sigma2, GAMMA * m / D)
    with torch.no_grad():
        u = energy(model, z, x, observed, sigma2, 1.0)
        assert torch.allclose(u * 2 * GAMMA / D, objective(model, z, x, observed, GAMMA))


def test_starts_from_latents_or_images(gen):
    model, x, missing = problem(gen)
    latent = torch.randn((2, D), generator=gen, dtype=torch.float64)
    with torch.no_grad():
        images = model.decode(latent)
    for start in (latent, latent.expand(3, 2, D), images, images.expand(3, 2, C, S, S)):
        _, info = posterior_samples(
            model,
            x,
            missing,
            3,
            gamma=GAMMA,
            steps=0,
            warmup=0,
            generator=gen,
            start=start,
            step_size=0.01,
        )
        assert torch.allclose(info.latent, latent.expand(3, 2, D))
        assert info.acceptance.isnan().all()  # no kept steps: no rate
    with pytest.raises(ValueError, match="start latents"):
        posterior_samples(
            model,
            x,
            missing,
            3,
            gamma=GAMMA,
            steps=0,
            warmup=0,
            generator=gen,
            start=torch.zeros(4, D),
        )


def test_bad_settings_are_one_line_user_errors(gen):
    model, x, missing = problem(gen)
    kw = dict(steps=1, warmup=1, generator=gen)
    for bad, match in (
        (dict(gamma=0), "gamma"),
        (dict(gamma=0.1, temperature=0), "temperature"),
        (dict(gamma=0.1, step_size=-1.0), "step_size"),
    ):
        with pytest.raises(UserError, match=match):
            posterior_samples(model, x, missing, 2, **bad, **kw)
    with pytest.raises(UserError, match="chain"):
        posterior_samples(model, x, missing, 0, gamma=0.1, **kw)


def test_a_start_that_decodes_to_nan_fails_its_chains_only(gen):
    """An image the inversion failed on gives NaN draws; the other image's chains run as if it
    were not there. Only when every start fails is it an error."""
    model, x, missing = problem(gen)
    start = model.encode(x).detach()
    bad = start.clone()
    bad[0, 0] = float("nan")
    kw = dict(gamma=GAMMA, steps=3, warmup=3)
    out, info = posterior_samples(
        model, x, missing, 4, start=bad, generator=torch.Generator().manual_seed(5), **kw
    )
    alone, _ = posterior_samples(
        model, x, missing, 4, start=start, generator=torch.Generator().manual_seed(5), **kw
    )
    assert torch.isnan(out[:, 0]).all() and torch.isfinite(out[:, 1]).all()
    assert torch.isfinite(info.step_size[:, 1]).all()
    assert torch.equal(out[:, 1], alone[:, 1])
    every = start.clone().fill_(float("nan"))
    with pytest.raises(UserError, match="non-finite"):
        posterior_samples(model, x, missing, 2, start=every, generator=gen, **kw)
