"""Numbers checked against values worked out by hand, so that a wrong formula cannot pass: the
bits/dim loss, the evaluation's RMSE and PSNR, and which SIMD build of the coupling loops runs."""

import math
import os
import platform
import subprocess
import sys

import pytest
import torch

from missingglow.analysis.evaluate import _errors, _Pool, _psnr
from missingglow.flow.preprocess import bits_per_dim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bits_per_dim_by_hand():
    # D = 4 values at 5 bits: a density of log p = −D·ln 2 costs 1 bit each beyond the bins' 5
    dims, bits = 4, 5
    log_p = torch.tensor([-4 * math.log(2), 0.0, 8 * math.log(2)])
    torch.testing.assert_close(
        bits_per_dim(log_p, bits, dims), torch.tensor([6.0, 5.0, 3.0]), rtol=0, atol=1e-6
    )


def test_rmse_and_psnr_by_hand():
    # 2 images of 3×2×2; the hole is 2 pixels (6 values) of image 0 and 1 pixel (3) of image 1
    ref = torch.zeros(2, 3, 2, 2)
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, :] = True
    mask[1, 0, 1, 1] = True
    out = ref.clone()
    out[0, :, 0, :] = 0.3  # inside: 6 values off by 0.3
    out[1, :, 1, 1] = 0.6  # inside: 3 values off by 0.6
    out[0, 0, 1, 1] = 0.2  # outside: 1 value off by 0.2 of 3·(4+4) − 9 = 15
    pool = _Pool()
    pool.add(_errors(out, ref, ref, mask), 2, seconds=0.5)
    row = pool.row("m", None)
    rmse_in = math.sqrt((6 * 0.09 + 3 * 0.36) / 9)
    assert row["rmse_in"] == pytest.approx(rmse_in, rel=1e-6)
    assert row["rmse_out"] == pytest.approx(math.sqrt(0.04 / 15), rel=1e-6)
    assert row["psnr_in"] == pytest.approx(-20 * math.log10(rmse_in), rel=1e-6)
    assert row["seconds_per_image"] == pytest.approx(0.25)
    assert _psnr(0.1) == pytest.approx(20.0) and _psnr(0.0) == math.inf


def test_a_non_finite_result_is_counted_and_left_out():
    ref = torch.zeros(2, 3, 2, 2)
    mask = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    out = torch.full_like(ref, 0.5)
    out[1, 0, 0, 0] = float("nan")
    inside, n_in, _, _, bad = _errors(out, ref, ref, mask)
    assert bad == 1 and n_in == 12 and inside == pytest.approx(12 * 0.25)


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"),
    reason="the SIMD builds are x86-64 only",
)
def test_the_widest_simd_build_the_cpu_has_is_the_default():
    flags = cpu_flags()
    expected = (
        "avx512"
        if {"avx512f", "avx2", "fma"} <= flags
        else "avx2"
        if {"avx2", "fma"} <= flags
        else "portable"
    )
    code = "import missingglow._C as C; print(C.coupling_simd())"  # a fresh process: no switch yet
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
