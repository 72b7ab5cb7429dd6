"""Shared test helpers.

Freshly built Glow layers are close to the identity (zero-initialised convs make every coupling
the identity and every prior N(0, I)), which hides bugs; `randomize` gives every parameter a random,
non-zero value so that each part of the model actually acts on its input.
"""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@torch.no_grad()
def randomize(module, generator=None, scale=0.1):
    """Perturb every floating parameter and mark every ActNorm initialised.

    Noise on the 1×1 convs' matrices is divided by √C, so a perturbed W stays well conditioned at
    any width, as a trained one is.
    """
    for name, param in module.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        if name.endswith(("invconv.w_l", "invconv.w_u", "invconv.weight")):
            noise /= param.shape[0] ** 0.5
        param.add_(scale * noise.to(param.device))
    for name, buf in module.named_buffers():
        if name.endswith("initialized"):
            buf.fill_(1)
    return module


@pytest.fixture
def gen():
    """A fresh generator per test; its seed is printed, so pytest shows it when the test fails."""
    seed = int(os.environ.get("MISSINGGLOW_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"MISSINGGLOW_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


def brute_force_logdet(fn, x):
    """log|det ∂fn(x_i)/∂x_i| per sample from the full Jacobian (float64, tiny inputs only)."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: fn(v).reshape(-1), xi)
        jac = jac.reshape(jac.shape[0], -1)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)
