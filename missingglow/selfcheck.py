"""`missingglow check`: what this installation can do, proven on a small random model.

Reports whether the fused extension loaded (and with which backends), then builds a small Glow,
data-initialises it, and checks that inverse(forward(x)) returns x and that the fused coupling
agrees with the reference, so a user sees at once whether the build is sound.
"""
import time

import torch

from .flow import ops, reference
from .flow.model import Glow
from .flow.preprocess import bits_per_dim, dequantize, quantize


def extension_status():
    """One line: is _C loaded, and which devices have kernels for every op."""
    if not ops.AVAILABLE:
        return f"fused ops: unavailable, the pure-PyTorch reference runs ({ops.WHY_UNAVAILABLE})"
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("missingglow::")]
    keys = [k for k in ("CPU", "CUDA")
            if all(torch._C._dispatch_has_kernel_for_dispatch_key(n, k) for n in names)]
    gpu = "a GPU is present" if torch.cuda.is_available() else "no GPU"
    from . import _C

    return (f"fused ops: {len(names)} ops with kernels for {', '.join(keys)} ({gpu}); "
            f"CPU coupling loops: {_C.coupling_simd()}")


def run(image_size=32, seed=0):
    """Yields report lines; raises AssertionError if the model does not invert."""
    yield f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    yield extension_status()
    gen = torch.Generator().manual_seed(seed)
    model = Glow(blocks=3, flows=4, hidden=32, image_size=image_size)
    images = torch.rand(16, 3, image_size, image_size, generator=gen)
    x = dequantize(quantize(images, 5), 5, generator=gen)
    start = time.perf_counter()
    with torch.no_grad():
        log_p = model.log_prob(x)  # the first pass also data-initialises every ActNorm
        back = model.decode(model.encode(x))
    elapsed = time.perf_counter() - start
    error = ((back - x).norm() / x.norm()).item()
    assert error < 1e-4, f"inverse(forward(x)) is off by {error:.2e}"
    bpd = bits_per_dim(log_p, 5, x[0].numel()).mean().item()
    yield (f"Glow 3 blocks x 4 flows, hidden 32, {image_size}x{image_size}: inverse(forward(x)) "
           f"relative error {error:.1e}, untrained {bpd:.2f} bits/dim on noise, {elapsed:.2f} s")
    if ops.AVAILABLE:
        x_b, log_s, t = (torch.randn(4, 6, 9, 9, generator=gen, dtype=torch.float64) for _ in range(3))
        fused = ops.coupling_forward(x_b, log_s, t)
        ref = reference.affine_coupling_forward(x_b, log_s, t)
        diff = max((a - b).abs().max().item() for a, b in zip(fused, ref))
        assert diff < 1e-10, f"fused coupling differs from the reference by {diff:.2e}"
        yield f"fused coupling vs reference (float64): max difference {diff:.1e}"
