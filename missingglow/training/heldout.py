"""Held-out bits/dim of masked images and of their clean originals, and the gap between them.

A model that has learned squares finds the grey pixels cheap, so the gap (masked − clean) shrinks
or turns negative; a model that has not pays extra for the square's sharp edges. The
dequantisation noise is seeded and shared by each masked image and its original, so successive
evaluations differ only by the model; training prepares the inputs once (`HeldoutEval`) and each
evaluation is then forwards only. Images whose log-density is non-finite are counted and left out
of both means.
"""

import torch

from ..flow.preprocess import bits_per_dim, match_channels, quantize
from ..seeding import generator


class HeldoutEval:
    """The first `limit` held-out images, masked and clean, prepared once as the model takes them
    (quantised, with the seeded noise, on `device`, in batches of `batch`): every evaluation sees
    the same inputs, so each call is forwards only and one read of the results."""

    def __init__(self, heldout, n_bits, seed, limit=None, batch=64, device="cpu", channels=None):
        n = len(heldout) if limit is None else min(limit, len(heldout))
        noise_gen = generator(seed, "eval-noise")
        self.n_bits, self.images, self.batches = n_bits, n, []
        for start in range(0, n, max(batch, 1)):
            masked, clean, _ = heldout.batch(list(range(start, min(start + batch, n))))
            masked, clean = (match_channels(x, channels) for x in (masked, clean))
            noise = torch.rand(masked.shape, generator=noise_gen) / 2**n_bits
            self.batches.append(
                tuple((quantize(images, n_bits) + noise).to(device) for images in (masked, clean))
            )

    @torch.no_grad()
    def __call__(self, model):
        """{"masked", "clean", "gap", "nonfinite", "images"} of `model` on the prepared images."""
        values = {"masked": [], "clean": []}
        for masked, clean in self.batches:
            dims = masked[0].numel()
            for key, x in (("masked", masked), ("clean", clean)):
                values[key].append(bits_per_dim(model.log_prob(x), self.n_bits, dims))
        masked, clean = (torch.cat(values[key]).cpu() for key in ("masked", "clean"))
        ok = torch.isfinite(masked) & torch.isfinite(clean)
        out = {
            key: v[ok].double().mean().item() if ok.any() else float("nan")
            for key, v in (("masked", masked), ("clean", clean))
        }
        out["gap"] = out["masked"] - out["clean"]
        out["nonfinite"] = int((~ok).sum())
        out["images"] = self.images
        return out


def heldout_bits_per_dim(model, heldout, n_bits, seed, limit=None, batch=64, device="cpu"):
    """{"masked", "clean", "gap", "nonfinite", "images"} over the first `limit` held-out images."""
    return HeldoutEval(heldout, n_bits, seed, limit, batch, device, model.in_channels)(model)
