"""Calibration and restoration scores against values worked by hand, by brute force, and by the
behaviour a rule promises (a calibrated sampler covers at the nominal rate; fair CRPS is
unbiased)."""

import math

import pytest
import torch

from missingglow.analysis.calibration import (
    central_interval,
    crps,
    gaussian_window,
    point_scores,
    quantile,
    sample_scores,
    ssim_map,
)


def values(*xs):
    """N samples of one image with one hole value: (N, 1, 1, 1, 1)."""
    return torch.tensor(xs, dtype=torch.float64).view(-1, 1, 1, 1, 1)


def one(y):
    return torch.full((1, 1, 1, 1), float(y), dtype=torch.float64)


HOLE = torch.ones((1, 1, 1, 1), dtype=torch.bool)


def test_type_6_quantiles_by_hand():
    x = torch.tensor([10.0, 0.0, 2.0, 1.0])  # sorted: 0, 1, 2, 10; N + 1 = 5
    assert quantile(x, 0.25).item() == pytest.approx(0.25)  # position 1.25
    assert quantile(x, 0.75).item() == pytest.approx(8.0)  # position 3.75: 2 + 0.75·8
    assert quantile(x, 0.4).item() == pytest.approx(1.0)  # position 2: the 2nd exactly
    assert quantile(x, 0.05).item() == 0.0 and quantile(x, 0.95).item() == 10.0  # clamped
    lower, upper = central_interval(torch.arange(19.0), 0.9)  # positions 1 and 19
    assert (lower.item(), upper.item()) == (0.0, 18.0)
    lower, upper = central_interval(torch.arange(19.0), 0.5)  # positions 5 and 15
    assert (lower.item(), upper.item()) == (4.0, 14.0)


def test_coverage_and_width_by_hand():
    samples = values(0, 1, 2, 10).expand(4, 1, 1, 1, 4).clone()  # 4 hole values of one image
    truth = torch.tensor([0.2, 5.0, 8.0, 9.0], dtype=torch.float64).view(1, 1, 1, 4)
    hole = torch.ones((1, 1, 1, 4), dtype=torch.bool)
    s = sample_scores(samples, truth, hole)
    # 50 %: [0.25, 8] holds 5 and 8 (ends count); 90 %: [0, 10] holds all four
    assert s["coverage_50"].item() == pytest.approx(0.5)
    assert s["width_50"].item() == pytest.approx(7.75)
    assert s["coverage_90"].item() == 1.0 and s["width_90"].item() == 10.0


def test_scores_count_only_hole_values_and_each_image_alone():
    samples = torch.zeros((3, 2, 1, 1, 2), dtype=torch.float64)
    samples[:, :, :, :, 0] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1)
    truth = torch.tensor([[2.0, 100.0], [7.0, 100.0]], dtype=torch.float64).view(2, 1, 1, 2)
    hole = torch.tensor([[True, False], [True, False]]).view(2, 1, 1, 2)
    s = sample_scores(samples, truth, hole)
    assert s["coverage_90"].tolist() == [1.0, 0.0]  # [1, 3] holds 2, not 7
    # best of N: image 0's best sample hits 2 exactly; image 1's best (3) is 4 off
    assert s["best_rmse"].tolist() == [0.0, 4.0]


def test_crps_by_hand_fair_form():
    # E|X − 5| = (5 + 4 + 3 + 5) / 4; the 6 pairs' |differences| add to 31, ordered pairs to 62,
    # over N(N − 1) = 12 pairs and halved: 31 / 12
    assert crps(values(0, 1, 2, 10), one(5)).item() == pytest.approx(17 / 4 - 31 / 12)
    assert crps(values(-1, 1), one(0)).item() == pytest.approx(0.0)
    assert crps(values(3), one(5)).item() == 2.0  # one sample: the absolute error
    assert crps(values(4, 4, 4), one(5)).item() == pytest.approx(1.0)  # repeated point forecast


def test_crps_is_unbiased_for_a_gaussian_at_small_n(gen):
    """Fair CRPS of N = 3 samples averages to the closed-form CRPS of N(0, 1) at y (Gneiting &
    Raftery 2007); the N² form would be off by E|X − X′| / 2N = 1 / (N·√π) ≈ 0.19."""
    y = torch.randn(20_000, generator=gen, dtype=torch.float64)
    samples = torch.randn((3, 20_000), generator=gen, dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    exact = y * (2 * normal.cdf(y) - 1) + 2 * normal.log_prob(y).exp() - 1 / math.sqrt(math.pi)
    estimate = crps(samples, y)
    error = (estimate - exact).mean().item()
    se = (estimate - exact).std().item() / math.sqrt(20_000)
    assert abs(error) < 4 * se


@pytest.mark.parametrize("n", [3, 19])
def test_a_calibrated_sampler_covers_at_the_nominal_rate(gen, n):
    """Truth and samples from the same distribution: 50 % of values fall in the 50 % interval
    (N = 3 resolves it), and with N = 19 also 90 % in the 90 % one."""
    size = 40_000
    truth = torch.randn((1, 1, 1, size), generator=gen, dtype=torch.float64)
    samples = torch.randn((n, 1, 1, 1, size), generator=gen, dtype=torch.float64)
    s = sample_scores(samples, truth, torch.ones((1, 1, 1, size), dtype=torch.bool))
    assert s["coverage_50"].item() == pytest.approx(0.5, abs=0.01)
    if n == 19:
        assert s["coverage_90"].item() == pytest.approx(0.9, abs=0.01)
    else:  # the widest 3 samples can span: [min, max], (N − 1)/(N + 1) of the time
        assert s["coverage_90"].item() == pytest.approx(0.5, abs=0.01)


def test_an_image_with_a_non_finite_sample_scores_nan():
    samples = torch.zeros((2, 2, 1, 2, 2))
    samples[1, 0, 0, 1, 1] = float("inf")
    s = sample_scores(samples, torch.zeros((2, 1, 2, 2)), torch.ones((2, 1, 2, 2), dtype=bool))
    for value in s.values():
        assert math.isnan(value[0].item()) and value[1].item() == value[1].item()


def test_point_scores_by_hand():
    truth = torch.rand((2, 3, 8, 8), dtype=torch.float64)
    hole = torch.zeros((2, 1, 8, 8), dtype=torch.bool)
    hole[:, :, 2:6, 2:6] = True  # a quarter of the image
    completion = torch.where(hole, truth + 0.1, truth + 1.0)  # outside: ignored, pasted back
    s = point_scores(completion, truth, hole)
    assert s["rmse"].tolist() == pytest.approx([0.1, 0.1])
    assert s["psnr"].tolist() == pytest.approx([20.0, 20.0])
    assert s["psnr_whole"].tolist() == pytest.approx([20 + 10 * math.log10(4)] * 2)
    expected = (ssim_map(completion, truth) * hole[:, 0]).sum((1, 2)) / 16
    assert s["ssim"].tolist() == pytest.approx(expected.tolist())
    assert point_scores(truth, truth, hole)["ssim"].tolist() == pytest.approx([1.0, 1.0])
    # an exact restoration: the PSNR of half an 8-bit level, not infinity; just above, the formula
    exact = point_scores(truth, truth, hole)
    cap = 20 * math.log10(510)
    assert exact["psnr"].tolist() == pytest.approx([cap, cap])
    assert exact["psnr_whole"].tolist() == pytest.approx([cap, cap])
    near = point_scores(torch.where(hole, truth + 0.003, truth), truth, hole)["psnr"]
    assert near.tolist() == pytest.approx([20 * math.log10(1 / 0.003)] * 2)
    assert (point_scores(truth * 0.5, truth, hole)["ssim"] < 1).all()


def test_ssim_of_an_image_with_itself_is_one(gen):
    x = torch.rand((2, 3, 16, 16), generator=gen)
    assert torch.allclose(ssim_map(x, x), torch.ones(2, 16, 16, dtype=torch.float64))
    y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    assert (ssim_map(x, y) < 0.99).all()


def brute_force_ssim(a, b, data_range=1.0):
    """SSIM at every pixel by its definition: the 11×11 Gaussian window cut at the border and
    renormalised, weighted means, variances and covariance, Wang et al.'s formula; channels
    averaged. Plain loops, no convolution."""
    g = gaussian_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    _, channels, height, width = a.shape
    out = torch.zeros(a.shape[0], height, width, dtype=torch.float64)
    for n in range(a.shape[0]):
        for i in range(height):
            for j in range(width):
                total = 0.0
                for c in range(channels):
                    w = sa = sb = saa = sbb = sab = 0.0
                    for u in range(-5, 6):
                        for v in range(-5, 6):
                            if 0 <= i + u < height and 0 <= j + v < width:
                                weight = (g[u + 5] * g[v + 5]).item()
                                p, q = a[n, c, i + u, j + v].item(), b[n, c, i + u, j + v].item()
                                w += weight
                                sa, sb = sa + weight * p, sb + weight * q
                                saa, sbb = saa + weight * p * p, sbb + weight * q * q
                                sab += weight * p * q
                    ma, mb = sa / w, sb / w
                    va, vb, cov = saa / w - ma * ma, sbb / w - mb * mb, sab / w - ma * mb
                    total += (
                        (2 * ma * mb + c1)
                        * (2 * cov + c2)
                        / ((ma * ma + mb * mb + c1) * (va + vb + c2))
                    )
                out[n, i, j] = total / channels
    return out


def test_ssim_matches_a_brute_force_window_on_a_tiny_image(gen):
    a = torch.rand((1, 2, 7, 9), generator=gen, dtype=torch.float64)
    b = (a + 0.3 * torch.randn(a.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    assert torch.allclose(ssim_map(a, b), brute_force_ssim(a, b), atol=1e-10)
    assert torch.allclose(
        ssim_map(2 * a, 2 * b, data_range=2.0), brute_force_ssim(a, b), atol=1e-10
    )


def test_ssim_matches_scikit_image_away_from_the_border(gen):
    """Where the window lies inside the image, the map is scikit-image's Gaussian SSIM (its
    reproduction of Wang et al.: gaussian_weights, σ = 1.5, population moments)."""
    metrics = pytest.importorskip("skimage.metrics")
    a = torch.rand((1, 1, 24, 24), generator=gen, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(a.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    _, theirs = metrics.structural_similarity(
        a[0, 0].numpy(),
        b[0, 0].numpy(),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    ours = ssim_map(a, b)[0]
    assert torch.allclose(ours[5:-5, 5:-5], torch.from_numpy(theirs)[5:-5, 5:-5], atol=1e-10)
