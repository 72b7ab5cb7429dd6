"""pytest's fixtures, and the checkout on sys.path so tests import `helpers` and the package."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def gen():
    """A fresh generator per test; its seed is printed, so pytest shows it when the test fails."""
    seed = int(os.environ.get("MISSINGGLOW_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"MISSINGGLOW_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def float32_proper():
    """cuDNN's float32 convolutions and matmuls without TF32 (10-bit mantissas), which would make
    the float32 reference itself 1e-3 off and every float32 check meaningless on a GPU."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
