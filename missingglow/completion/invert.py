"""Restoring the missing pixels by latent-norm inversion: fit the observed pixels, keep ‖z‖ small.

Low-temperature regions of the latent space hold square-free images, so a completion is the image
Φ⁻¹(z) whose latent z minimises, per image,

    mean over observed pixels of (Φ⁻¹(z) − x)²  +  γ · ‖z‖² / D

(the objective of Asim et al., "Invertible generative models for inverse problems", with the prior
term scaled per latent dimension so that γ means the same at any image size). The search starts at
α·Φ(x_start), where x_start is the input with its hole filled by a smooth harmonic fill (or left
grey), and ends by putting every observed pixel back exactly. With several samples, each start gets
its own small Gaussian perturbation of the latent, so the completions show what the model is unsure
of.
"""

import torch

OPTIMISERS = ("adam", "sgd")
STARTS = ("fill", "input")
# chosen on held-out images of two trained models: docs/imputation.md
DEFAULTS = dict(gamma=0.01, steps=150, lr=0.05, alpha=0.6, start="fill", optimiser="adam")


def observed_mean(images, missing):
    """Each image's mean colour over its observed pixels, (B, C, 1, 1)."""
    observed = (~missing).to(images.dtype)
    return (images * observed).sum((2, 3), keepdim=True) / observed.sum((2, 3), keepdim=True)


def harmonic_fill(images, missing, iterations=None):
    """Fill the missing pixels by repeated 4-neighbour averaging (a discrete Laplace equation).

    images: (B, C, S, S); missing: (B, 1, S, S) bool. Observed pixels are never changed. Starts from
    each image's mean observed colour; `iterations` sweeps (0: that start alone), by default a
    number that grows with the image side.
    """
    x = torch.where(missing, observed_mean(images, missing), images)
    for _ in range(4 * images.shape[-1] if iterations is None else iterations):
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
        average = (
            padded[..., :-2, 1:-1]
            + padded[..., 2:, 1:-1]
            + padded[..., 1:-1, :-2]
            + padded[..., 1:-1, 2:]
        ) / 4
        x = torch.where(missing, average, images)
    return x


def objective(model, z, x, observed, gamma):
    """Per-image objective: mean squared error over observed values + γ·‖z‖²/D."""
    fit = ((model.decode(z) - x) ** 2 * observed).sum((1, 2, 3))
    fit = fit / observed.expand_as(x).sum((1, 2, 3)).clamp_min(1)
    return fit + gamma * (z * z).mean(1)


@torch.enable_grad()  # callers may run under no_grad (evaluate does); the search needs gradients
def invert(
    model,
    x,
    missing,
    *,
    gamma=DEFAULTS["gamma"],
    steps=DEFAULTS["steps"],
    lr=DEFAULTS["lr"],
    alpha=DEFAULTS["alpha"],
    start=DEFAULTS["start"],
    optimiser=DEFAULTS["optimiser"],
    samples=1,
    spread=0.1,
    generator=None,
    on_step=None,
    return_latent=False,
):
    """Complete preprocessed images x (B, C, S, S) where `missing` (B, 1, S, S) is True.

    Returns (samples, B, C, S, S) completions in model space, observed pixels exactly as in x, and
    the objective per step (steps + 1, samples·B) for inspection; with `return_latent` also the
    final latents (samples, B, D), where a posterior sampler can start. `on_step(i)` is called
    after each step (a progress bar). The model is used as it is (eval mode, no parameter
    gradients).
    """
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, not {start!r}")
    if optimiser not in OPTIMISERS:
        raise ValueError(f"optimiser must be one of {OPTIMISERS}, not {optimiser!r}")
    b = x.shape[0]
    observed = (~missing).to(x.dtype)
    x_start = harmonic_fill(x, missing) if start == "fill" else x
    with torch.no_grad():
        z0 = alpha * model.encode(x_start)
    z0 = z0.repeat(samples, 1)
    if samples > 1:
        noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device)
        noise[:b] = 0  # the first completion of each image is the deterministic one
        z0 = z0 + spread * noise
    xs, obs = x.repeat(samples, 1, 1, 1), observed.repeat(samples, 1, 1, 1)
    z = z0.clone().requires_grad_(True)
    opt = (
        torch.optim.Adam([z], lr=lr)
        if optimiser == "adam"
        else torch.optim.SGD([z], lr=lr, momentum=0.9)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    history = []
    try:
        for i in range(steps):
            loss = objective(model, z, xs, obs, gamma)
            history.append(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            if on_step is not None:
                on_step(i)
        with torch.no_grad():
            history.append(objective(model, z, xs, obs, gamma))
            out = model.decode(z)
    finally:
        for p in params:
            p.requires_grad_(True)
    out = torch.where(missing.repeat(samples, 1, 1, 1), out, xs)
    out, history = out.view(samples, b, *x.shape[1:]), torch.stack(history)
    if return_latent:
        return out, history, z.detach().view(samples, b, -1)
    return out, history
