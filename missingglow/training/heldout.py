"""Held-out bits/dim of masked images and of their clean originals, and the gap between them.

A model that has learned squares finds the grey pixels cheap, so the gap (masked − clean) shrinks
or turns negative; a model that has not pays extra for the square's sharp edges. The
dequantisation noise is seeded and shared by each masked image and its original, so successive
evaluations differ only by the model. Images whose log-density is non-finite are counted and left
out of both means.
"""
import torch

from ..flow.preprocess import bits_per_dim, match_channels, quantize
from ..seeding import generator


@torch.no_grad()
def heldout_bits_per_dim(model, heldout, n_bits, seed, limit=None, batch=64, device="cpu"):
    """{"masked", "clean", "gap", "nonfinite", "images"} over the first `limit` held-out images."""
    n = len(heldout) if limit is None else min(limit, len(heldout))
    noise_gen = generator(seed, "eval-noise")
    values = {"masked": [], "clean": []}
    for start in range(0, n, max(batch, 1)):
        masked, clean, _ = heldout.batch(list(range(start, min(start + batch, n))))
        masked, clean = (match_channels(x, model.in_channels) for x in (masked, clean))
        dims = masked[0].numel()
        noise = torch.rand(masked.shape, generator=noise_gen) / 2 ** n_bits
        for key, images in (("masked", masked), ("clean", clean)):
            x = (quantize(images, n_bits) + noise).to(device)
            values[key].append(bits_per_dim(model.log_prob(x), n_bits, dims).cpu())
    masked, clean = torch.cat(values["masked"]), torch.cat(values["clean"])
    ok = torch.isfinite(masked) & torch.isfinite(clean)
    out = {key: v[ok].double().mean().item() if ok.any() else float("nan")
           for key, v in (("masked", masked), ("clean", clean))}
    out["gap"] = out["masked"] - out["clean"]
    out["nonfinite"] = int((~ok).sum())
    out["images"] = n
    return out
