"""The holes of `train --complete`: missing values, filled from the model as it learns.

A naive run trains on its images as they are, grey holes included, so the model learns the holes
as content. With --complete each training image's hole pixels hold a fill instead: it starts as
the harmonic (smooth) fill of the observed pixels around it and is re-fitted every `refill_every`
iterations from the current model by latent inversion (completion/invert.py), warm-started from
the last fill. That is MCFlow's loop (Richardson et al., 2020): maximum likelihood on the filled
images, with the missing values re-imputed from the model every so often, observed values kept.

A batch is where(missing, fill, observed): the observed pixels never pass through the fills, so
nothing here can change them. Fills are kept as 8-bit values (what the image cache holds, and
finer than the bins the model sees), so a checkpoint stores them exactly: the hole pixels only,
in the order of the training split. A resumed run continues with the very same fills, and a
rollback goes back to the fills of the checkpoint it reloads.
"""

import time

import torch

from ..completion.invert import harmonic_fill, invert
from ..flow.preprocess import from_model, to_model


class Fills:
    """The current fill of every training image's holes (`images`: a MaskedImages split)."""

    def __init__(self, images, channels, n_bits, batch=128):
        self.images, self.channels, self.n_bits, self.chunk = images, channels, n_bits, batch
        s = images.cache.size
        self.values = torch.zeros((len(images), 3, s, s), dtype=torch.uint8)
        self.refills = 0
        for js in self._chunks():
            masked, missing = self._masked(js)
            self.values[js[0] : js[-1] + 1] = to_bytes(harmonic_fill(masked, missing))

    def _chunks(self):
        n = len(self.images)
        return [list(range(a, min(a + self.chunk, n))) for a in range(0, n, self.chunk)]

    def _masked(self, js):
        masked, _, _ = self.images.batch(js)
        return masked, self.images.missing(js)

    def error(self):
        """RMSE of the fills against the clean pixels in the holes, on the 0–1 scale: how far the
        fills are from the truth, for drawn squares. None with users' own masks (--masks), where
        the pixels under a hole are whatever the file holds, not the truth."""
        if getattr(self.images, "holes", None) is not None:
            return None
        total, count = 0.0, 0
        for js in self._chunks():
            _, clean, _ = self.images.batch(js)
            hole = self.images.missing(js).expand_as(clean)
            diff = self.values[js].float() / 255 - clean
            total += float((diff[hole] ** 2).sum())
            count += int(hole.sum())
        return (total / max(count, 1)) ** 0.5

    def batch(self, js):
        """Items js with their holes filled: float32 (B, 3, S, S) in [0, 1], observed pixels
        exactly as the dataset gives them."""
        masked, missing = self._masked(js)
        return torch.where(missing, self.values[js].float() / 255, masked)

    @torch.no_grad()
    def refill(self, model, device, steps, on_chunk=None):
        """Re-fit every hole from `model` by `steps` inversion steps from its current fill (the
        prior's weight and step size are invert's defaults). A completion that is not finite keeps
        its old fill. Returns {"seconds", "changed": mean absolute change of the hole pixels,
        "fill_rmse": `error()` after}."""
        start, moved, count = time.perf_counter(), 0.0, 0
        was_training = model.training
        model.eval()
        try:
            for js in self._chunks():
                masked, missing = self._masked(js)
                filled = torch.where(missing, self.values[js].float() / 255, masked)
                x = to_model(filled, self.n_bits, self.channels).to(device)
                out, _ = invert(model, x, missing.to(device), steps=steps, start="input", alpha=1.0)
                completion = from_model(out[0].cpu(), self.n_bits)
                ok = torch.isfinite(completion).flatten(1).all(1).view(-1, 1, 1, 1)
                new = torch.where(missing & ok, to_bytes(completion), self.values[js])
                hole = missing.expand_as(new)
                moved += (new[hole].float() - self.values[js][hole].float()).abs().sum().item()
                count += int(hole.sum())
                self.values[js[0] : js[-1] + 1] = new
                if on_chunk is not None:
                    on_chunk(len(js))
        finally:
            model.train(was_training)
        self.refills += 1
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "changed": moved / max(count, 1) / 255,
            "fill_rmse": self.error(),
        }

    def holes(self):
        """bool (N, 3, S, S): where the fills matter."""
        out = torch.zeros(self.values.shape, dtype=torch.bool)
        for js in self._chunks():
            out[js[0] : js[-1] + 1] = self.images.missing(js).expand(-1, 3, -1, -1)
        return out

    def state_dict(self):
        return {"holes": self.values[self.holes()].clone(), "refills": self.refills}

    def load_state_dict(self, state):
        holes = self.holes()
        stored = state["holes"]
        if stored.dtype != torch.uint8 or stored.numel() != int(holes.sum()):
            raise ValueError(
                f"the checkpoint's fills hold {stored.numel()} values, these images' holes "
                f"{int(holes.sum())}"
            )
        self.values[holes] = stored
        self.refills = int(state["refills"])


def to_bytes(images):
    """[0, 1] images → their 8-bit values (NaN → 0; callers keep such fills out)."""
    return torch.nan_to_num(images * 255, nan=0.0).round().clamp(0, 255).to(torch.uint8)
