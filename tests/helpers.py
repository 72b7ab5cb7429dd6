"""Shared test helpers: random layers, brute-force Jacobians, and a tiny saved run.

Freshly built Glow layers are close to the identity (zero-initialised convs make every coupling
the identity and every prior N(0, I)), which hides bugs; `randomize` gives every parameter a random,
non-zero value so that each part of the model actually acts on its input.
"""

import os

import torch

from missingglow.flow.model import Glow
from missingglow.flow.preprocess import quantize
from missingglow.training.checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


@torch.no_grad()
def randomize(module, generator=None, scale=0.1):
    """Perturb every floating parameter and mark every ActNorm initialised.

    Noise on the 1×1 convs' matrices is divided by √C, so a perturbed W stays well conditioned at
    any width, as a trained one is. Noise on a prior's conv weights is divided by √fan-in: a prior
    predicts log σ linearly from the kept half, and unscaled noise there turns a kept half of a few
    tens into σ = e^±25, whose samples overflow, which tests nothing but float range.
    """
    for name, param in module.named_parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        if name.endswith(("invconv.w_l", "invconv.w_u", "invconv.weight")):
            noise /= param.shape[0] ** 0.5
        elif ".prior." in f".{name}" and name.endswith("conv.weight"):
            noise /= param[0].numel() ** 0.5
        param.add_(scale * noise.to(param.device))
    for name, buf in module.named_buffers():
        if name.endswith("initialized"):
            buf.fill_(1)
    return module


def brute_force_logdet(fn, x):
    """log|det ∂fn(x_i)/∂x_i| per sample from the full Jacobian (float64, tiny inputs only)."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: fn(v).reshape(-1), xi)
        jac = jac.reshape(jac.shape[0], -1)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# A tiny trained-looking checkpoint for the analysis tests: a 16×16 Glow (2 blocks × 2 flows,
# hidden 8) whose ActNorms are initialised on synthetic faces, saved as `missingglow train` would.
CONFIG = dict(
    data=None,
    synthetic_count=64,
    image_size=16,
    square=4,
    squares=1,
    seed=0,
    n_bits=5,
    blocks=2,
    flows=2,
    hidden=8,
)


def tiny_run(run_dir, cache_dir):
    """Write the checkpoint into run_dir (the synthetic cache into cache_dir); returns run_dir."""
    from missingglow.data.cache import open_dataset
    from missingglow.data.datasets import MaskedImages

    torch.manual_seed(0)
    model = Glow(blocks=2, flows=2, hidden=8, image_size=16)
    cache = open_dataset(None, 16, cache_dir=cache_dir, synthetic_count=64, quiet=True)
    masked, _, _ = MaskedImages(cache, 4, 1, 0, split="train").batch(list(range(32)))
    with torch.no_grad():
        model(quantize(masked) + torch.rand(masked.shape) / 32)  # initialises every ActNorm
    save_checkpoint(
        run_dir,
        {
            "config": dict(CONFIG),
            "model_config": model.config,
            "model": model.state_dict(),
            "iteration": 0,
        },
    )
    return run_dir


def env_with_cache(cache_dir):
    env = dict(os.environ)
    env["MISSINGGLOW_CACHE"] = str(cache_dir)
    return env


def run_in_process(args, env=None, cwd=None):
    """`missingglow ARGS` run in this process, as a CompletedProcess (returncode, stdout, stderr):
    the command line's own entry point, without paying a Python and torch start per call. `env`
    entries are set for the call only."""
    import contextlib
    import io
    import subprocess

    from missingglow.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    saved = {k: os.environ.get(k) for k in (env or {})}
    here = os.getcwd()
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(here)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def error_line(code, out, err, ignore=("Warning",)):
    """The one line of a refused command: exit code 2, no traceback, and one `error: …` line on
    stderr once lines holding any of `ignore` (warnings torch may print) are left out."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not any(i in line for i in ignore)]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# The training tests' tiny setting: an 8-px model that trains in a fraction of a second a step.
TINY = dict(
    image_size=8,
    blocks=2,
    flows=2,
    hidden=8,
    batch=8,
    synthetic_count=48,
    square=3,
    iterations=6,
    lr=1e-3,
    warmup=2,
    eval_every=1000,
    sample_every=1000,
    checkpoint_every=3,
    log_every=1,
    heldout_images=8,
)


def load_script(relative_path, name):
    """A script of the repository (bench/, experiments/) imported as a module by its path: they
    are not part of the package, and their tests call into them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the tiny setting's model and data as `train` flags, for tests that go through the command line
TINY_CLI = [
    word
    for key, flag in (
        ("image_size", "--size"),
        ("blocks", "--blocks"),
        ("flows", "--flows"),
        ("hidden", "--hidden"),
        ("batch", "--batch"),
        ("synthetic_count", "--synthetic-count"),
        ("square", "--square"),
    )
    for word in (flag, str(TINY[key]))
]


def tiny_config(tmp_path, name, **overrides):
    """The tiny setting as a TrainConfig writing to tmp_path/name, with overrides."""
    from missingglow.training.config import resolve_config

    return resolve_config(dict(TINY, out=str(tmp_path / name), **overrides), has_gpu=False)[0]


def torchrun_train(args, env=None, processes=2):
    """`missingglow train *args` under torchrun with `processes` CPU processes (gloo), from the
    repository root; the finished CompletedProcess, its output captured. `env`: the processes'
    environment (None: this one's, at one thread per process)."""
    import subprocess
    import sys

    if env is None:
        env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    return subprocess.run(
        [*command, str(processes), "-m", "missingglow", "train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
