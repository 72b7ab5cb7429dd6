"""Scores for restorations against the truth: is a sampler's spread honest, and how good is a
single completion?

Every score is per image, shape (B,), over the values (pixels × channels) inside the hole unless it
says otherwise, so each image counts the same whatever its hole's size; average over images to
report. Images are expected in [0, 1] (`data_range` sets another range for PSNR and SSIM). An image
without a hole gets NaN for hole scores; a non-finite completion gives NaN for that image.

For N samples per image (`sample_scores`):
- coverage of the central 50 % and 90 % intervals, and their mean width. Quantiles are per value,
  Hyndman & Fan's type 6: the p-quantile sits at position p·(N + 1) among the sorted samples,
  interpolated linearly and clamped to the smallest and largest sample. When the truth is one more
  draw from the sampler's distribution its rank among the N + 1 is uniform, so a calibrated
  sampler gets the nominal coverage (exactly where p·(N + 1) is whole); the type 7 rule of
  torch.quantile would make even a perfect sampler under-cover at small N. An interval the N
  samples cannot resolve (90 % needs N ≥ 19, 50 % needs N ≥ 3) is as wide as the samples reach.
- CRPS by the sample estimator E|X − y| − ½·E|X − X′|, with E|X − X′| over the N(N − 1) pairs of
  distinct samples ("fair" CRPS): it is unbiased for the CRPS of the sampler's distribution, so
  methods run with different N compare; the N² form is the CRPS of the N samples' empirical
  distribution and favours nobody but over-states every sampler's score by E|X − X′| / 2N. With
  N = 1 it is the absolute error (a point forecast).
- best-of-N RMSE: the RMSE of the image's best sample (what "diverse completions" claims to help).

For one completion (`point_scores`): RMSE and PSNR inside the hole, SSIM inside the hole (the mean
of the SSIM map over hole pixels, channels averaged), and PSNR over the whole image with the
observed pixels pasted back from the truth (GlowIP's protocol). SSIM is Wang et al. (2004): an
11×11 Gaussian window with σ = 1.5, C1 = (0.01·L)², C2 = (0.03·L)², population (weighted)
moments; near the border the window is cut at the image's edge and renormalised, so the map has a
value at every pixel (a hole at the border included) without inventing pixels by padding.
"""

import math

import torch

LEVELS = (0.5, 0.9)
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def quantile(samples, p):
    """Hyndman & Fan type 6 p-quantile along dim 0: position p·(N + 1) among the sorted samples,
    interpolated linearly, clamped to [smallest, largest]."""
    ordered = samples.sort(0).values
    return _quantile_sorted(ordered, p)


def _quantile_sorted(ordered, p):
    n = ordered.shape[0]
    position = min(max(p * (n + 1), 1.0), float(n))  # 1-based
    below = int(math.floor(position))
    frac = position - below
    lower = ordered[below - 1]
    if frac == 0:
        return lower
    return lower + frac * (ordered[below] - lower)


def central_interval(samples, level):
    """(lower, upper) of the central `level` interval of the samples along dim 0 (type 6)."""
    ordered = samples.sort(0).values
    tail = (1 - level) / 2
    return _quantile_sorted(ordered, tail), _quantile_sorted(ordered, 1 - tail)


def crps(samples, truth):
    """Fair CRPS per value: E|X − y| − E|X − X′| / 2 over distinct pairs; |X − y| when N = 1.

    Σ over ordered pairs of |X_i − X_j| is 2·Σ_k (2k − N − 1)·X_(k) for the sorted samples (k from
    1), so this costs a sort, not N² differences."""
    n = samples.shape[0]
    error = (samples - truth).abs().mean(0)
    if n == 1:
        return error
    ordered = samples.sort(0).values
    k = torch.arange(1, n + 1, dtype=samples.dtype, device=samples.device)
    weights = (2 * k - n - 1).view(n, *([1] * (samples.dim() - 1)))
    spread = (weights * ordered).sum(0) / (n * (n - 1))  # = E|X − X′| / 2 over distinct pairs
    return error - spread


def _hole_mean(values, missing):
    """Mean over each image's hole values: values (..., B, C, S, S), missing (B, 1, S, S)."""
    hole = missing.expand(values.shape[-4:]).to(values.dtype)
    return (values * hole).sum((-3, -2, -1)) / hole.sum((-3, -2, -1))


def sample_scores(samples, truth, missing, levels=LEVELS):
    """Calibration of N samples per image (N, B, C, S, S) against the truth (B, C, S, S) over the
    hole `missing` (B, 1, S, S): {"coverage_50", "width_50", "coverage_90", "width_90", "crps",
    "best_rmse"}, each (B,)."""
    samples, truth = samples.double(), truth.double()
    out = {}
    ordered = samples.sort(0).values
    for level in levels:
        tail = (1 - level) / 2
        lower, upper = _quantile_sorted(ordered, tail), _quantile_sorted(ordered, 1 - tail)
        inside = ((lower <= truth) & (truth <= upper)).double()
        name = f"{round(100 * level)}"
        out[f"coverage_{name}"] = _hole_mean(inside, missing)
        out[f"width_{name}"] = _hole_mean(upper - lower, missing)
    out["crps"] = _hole_mean(crps(samples, truth), missing)
    out["best_rmse"] = _hole_mean((samples - truth) ** 2, missing).sqrt().min(0).values
    broken = ~torch.isfinite(samples).flatten(2).all(2).all(0)  # an image with a bad sample
    return {name: value.masked_fill(broken, float("nan")) for name, value in out.items()}


def psnr(mse, data_range=1.0):
    """PSNR in dB of each mean squared error, at most that of an error of half an 8-bit level:
    a restoration that exact is the truth as an image file holds it, and one flat, perfectly
    restored image must not make a mean over images infinite."""
    floor = (data_range / 510) ** 2
    return 10 * torch.log10(data_range**2 / mse.clamp_min(floor))


def point_scores(completion, truth, missing, data_range=1.0):
    """One completion (B, C, S, S) against the truth: {"rmse", "psnr", "ssim"} inside the hole and
    "psnr_whole" over the image with the observed pixels pasted back, each (B,)."""
    completion, truth = completion.double(), truth.double()
    mse = _hole_mean((completion - truth) ** 2, missing)
    pasted = torch.where(missing, completion, truth)
    whole = ((pasted - truth) ** 2).mean((1, 2, 3))
    hole = missing[:, 0].double()
    ssim = (ssim_map(completion, truth, data_range) * hole).sum((1, 2)) / hole.sum((1, 2))
    return {
        "rmse": mse.sqrt(),
        "psnr": psnr(mse, data_range),
        "ssim": ssim,
        "psnr_whole": psnr(whole, data_range),
    }


def gaussian_window(size=SSIM_WINDOW, sigma=SSIM_SIGMA, dtype=torch.float64):
    """The 1-D Gaussian weights (size,), summing to 1; the 2-D window is their outer product."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _local_mean(images, window):
    """Weighted mean over the window cut at the border and renormalised: (B, C, S, S)."""
    c, r = images.shape[1], window.shape[0] // 2
    rows = window.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    cols = window.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(x):
        x = torch.nn.functional.conv2d(x, rows, padding=(r, 0), groups=c)
        return torch.nn.functional.conv2d(x, cols, padding=(0, r), groups=c)

    return blur(images) / blur(torch.ones_like(images))


def ssim_map(a, b, data_range=1.0):
    """SSIM at every pixel of images a, b (B, C, S, S), channels averaged: (B, S, S), float64."""
    a, b = a.double(), b.double()
    window = gaussian_window().to(a.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _local_mean(a, window), _local_mean(b, window)
    var_a = _local_mean(a * a, window) - mu_a**2
    var_b = _local_mean(b * b, window) - mu_b**2
    cov = _local_mean(a * b, window) - mu_a * mu_b
    ssim = (
        (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    )
    return ssim.mean(1)
