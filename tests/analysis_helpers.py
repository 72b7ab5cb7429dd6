"""A tiny trained-looking checkpoint for the analysis tests: a 16×16 Glow (2 blocks × 2 flows,
hidden 8) whose ActNorms are initialised on synthetic faces, saved as `missingglow train` would."""
import os

import torch

from missingglow.checkpoint import save_checkpoint
from missingglow.model import Glow
from missingglow.preprocess import quantize

CONFIG = dict(data=None, synthetic_count=64, image_size=16, square=4, squares=1, seed=0, n_bits=5,
              blocks=2, flows=2, hidden=8)


def tiny_run(run_dir, cache_dir):
    """Write the checkpoint into run_dir (the synthetic cache into cache_dir); returns run_dir."""
    from missingglow.data import MaskedImages, open_dataset

    torch.manual_seed(0)
    model = Glow(blocks=2, flows=2, hidden=8, image_size=16)
    cache = open_dataset(None, 16, cache_dir=cache_dir, synthetic_count=64, quiet=True)
    masked, _, _ = MaskedImages(cache, 4, 1, 0, split="train").batch(list(range(32)))
    with torch.no_grad():
        model(quantize(masked) + torch.rand(masked.shape) / 32)  # initialises every ActNorm
    save_checkpoint(run_dir, {"config": dict(CONFIG), "model_config": model.config,
                              "model": model.state_dict(), "iteration": 0})
    return run_dir


def env_with_cache(cache_dir):
    env = dict(os.environ)
    env["MISSINGGLOW_CACHE"] = str(cache_dir)
    return env
