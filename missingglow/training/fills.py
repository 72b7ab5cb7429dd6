"""The holes of `train --complete`: missing values, filled from the model as it learns.

A naive run trains on its images as they are, grey holes included, so the model learns the holes
as content. With --complete each training image's hole pixels hold a fill instead: it starts as
the harmonic (smooth) fill of the observed pixels around it and is re-fitted every `refill_every`
iterations from the current model by latent inversion (completion/invert.py) started from the
current fill. That is MCFlow's loop (Richardson et al., 2020): maximum likelihood on the filled
images, with the missing values re-imputed from the model every so often, observed values kept.
A new fill is kept only where the model gives the filled image at least the density of the old
one, so a refill never lowers the likelihood the training maximises (a hard-EM step), and a short
inversion that wanders off leaves its image as it was.

A batch is where(missing, fill, observed): the observed pixels never pass through the fills, so
nothing here can change them. Fills are kept as 8-bit values (what the image cache holds, and
finer than the bins the model sees), so a checkpoint stores them exactly: the hole pixels only,
in the order of the training split, with each image's hole size to check them against. A refill
builds its fills aside and swaps them in whole, so a run stopped mid-way keeps the old ones and
counts no refill (the loop refills on resume). A resumed run continues with the very same fills,
and a rollback goes back to the fills of the checkpoint it reloads.
"""

import time

import torch

from ..completion.invert import harmonic_fill, invert
from ..errors import UserError
from ..flow.preprocess import from_model, to_model


class Fills:
    """The current fill of every training image's holes (`images`: a MaskedImages split), worked
    on `chunk` images at a time. `start=False` (a resumed run, whose checkpoint gives every
    hole's fill) skips the harmonic fill the state dict would overwrite."""

    def __init__(self, images, channels, n_bits, chunk=128, start=True):
        self.images, self.channels, self.n_bits, self.chunk = images, channels, n_bits, chunk
        s = images.cache.size
        self.values = torch.zeros((len(images), 3, s, s), dtype=torch.uint8)
        self.refills = 0
        for js in self._chunks():
            masked, missing = self._masked(js)
            # outside the holes the harmonic fill is the image's own bytes: the same either way
            filled = harmonic_fill(masked, missing) if start else masked
            self.values[js[0] : js[-1] + 1] = to_bytes(filled)

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
        exactly as the dataset gives them (the holes' grey is never painted: the fills cover it)."""
        clean = self.images.clean_batch(js)
        return torch.where(self.images.missing(js), self.values[js].float() / 255, clean)

    @torch.no_grad()
    def refill(self, model, device, steps, on_chunk=None, rank=0, world=1, share=None):
        """Re-fit every hole from `model`: `steps` inversion steps from the current fill (invert's
        start, prior weight and step size), kept where the completion is finite and the model's
        log-density of the filled image does not drop. Returns {"seconds", "kept": share of the
        images given a new fill, "changed": mean absolute change of the hole pixels, "fill_rmse":
        `error()` after, measured by rank 0 alone, which logs it (None on the others)}.

        Under torchrun each of `world` processes re-fits every world-th chunk, from its `rank`
        on, and `share(values, owners, totals)` (in the training loop) gives every process the
        other chunks' new values (chunk k's rows from process owners[k]) and sums `totals`
        (moved, counted, kept) over the processes; the fills are those one process would make."""
        start, totals = time.perf_counter(), torch.zeros(3, dtype=torch.float64)
        was_training = model.training
        model.eval()
        values = self.values.clone()
        chunks = self._chunks()
        try:
            for js in chunks[rank::world]:
                totals += self._refill_chunk(model, device, steps, js, values)
                if on_chunk is not None:
                    on_chunk(len(js))
        finally:
            model.train(was_training)
        if share is not None:
            share(values, [k % world for k in range(len(chunks))], totals)
        self.values, self.refills = values, self.refills + 1  # whole, or not at all
        moved, count, kept = totals.tolist()
        return {
            "seconds": time.perf_counter() - start,
            "kept": kept / max(len(values), 1),
            "changed": moved / max(count, 1) / 255,
            "fill_rmse": self.error() if rank == 0 else None,
        }

    def _refill_chunk(self, model, device, steps, js, values):
        """Re-fit the images js into `values`; returns (moved, counted, kept) of them."""
        masked, missing = self._masked(js)
        old = values[js[0] : js[-1] + 1]
        before = torch.where(missing, old.float() / 255, masked)
        x = to_model(before, self.n_bits, self.channels).to(device)
        out, _ = invert(model, x, missing.to(device), steps=steps, start="input")
        new = torch.where(missing, to_bytes(from_model(out[0].cpu(), self.n_bits)), old)
        after = torch.where(missing, new.float() / 255, masked)
        gain = self._log_density(model, after, device) - self._log_density(model, before, device)
        better = (torch.isfinite(gain) & (gain >= 0)).view(-1, 1, 1, 1)
        new = torch.where(better, new, old)
        hole = missing.expand_as(new)
        moved = (new[hole].float() - old[hole].float()).abs().sum().item()
        values[js[0] : js[-1] + 1] = new  # `old` is a view of these rows: measured first
        return torch.tensor([moved, int(hole.sum()), int(better.sum())], dtype=torch.float64)

    def chunk_rows(self):
        """(first, end) rows of each chunk, in order: what `share` exchanges."""
        return [(js[0], js[-1] + 1) for js in self._chunks()]

    def _log_density(self, model, images, device):
        """log p of [0, 1] images at their bins' centres (the same point for old and new)."""
        return model.log_prob(to_model(images, self.n_bits, self.channels).to(device)).cpu()

    def holes(self):
        """bool (N, 3, S, S): where the fills matter."""
        out = torch.zeros(self.values.shape, dtype=torch.bool)
        for first, end, hole in self._chunk_holes():
            out[first:end] = hole
        return out

    def _chunk_holes(self):
        """(first, end, bool (n, 3, S, S) holes) of each chunk: a checkpoint's gathers and
        checks go chunk by chunk, never holding the whole split's mask."""
        for js in self._chunks():
            yield js[0], js[-1] + 1, self.images.missing(js).expand(-1, 3, -1, -1)

    def state_dict(self):
        parts, sizes = [torch.zeros(0, dtype=torch.uint8)], [torch.zeros(0, dtype=torch.int32)]
        for first, end, hole in self._chunk_holes():
            parts.append(self.values[first:end][hole])
            sizes.append(hole.flatten(1).sum(1).to(torch.int32))
        return {"holes": torch.cat(parts), "sizes": torch.cat(sizes), "refills": self.refills}

    def load_state_dict(self, state, where="the checkpoint"):
        """Take the fills of a state_dict; a UserError when they were saved for other holes (the
        image folder or the masks changed since)."""
        stored, sizes = state["holes"], state.get("sizes")
        mine = torch.cat(
            [torch.zeros(0, dtype=torch.int32)]
            + [hole.flatten(1).sum(1).to(torch.int32) for _, _, hole in self._chunk_holes()]
        )
        same = stored.dtype == torch.uint8 and stored.numel() == int(mine.sum())
        if same and sizes is not None:
            same = torch.equal(sizes, mine)
        if not same:
            raise UserError(
                f"the fills in {where} were saved for other holes than these training images "
                "have (the images or masks changed since it was written); put them back as they "
                "were, or start a new run"
            )
        at = 0
        for first, end, hole in self._chunk_holes():
            count = int(hole.sum())
            self.values[first:end][hole] = stored[at : at + count]
            at += count
        self.refills = int(state["refills"])


def to_bytes(images):
    """[0, 1] images → their 8-bit values (NaN → 0; callers keep such fills out)."""
    return torch.nan_to_num(images * 255, nan=0.0).round().clamp(0, 255).to(torch.uint8)
