"""A trained run opened for analysis, and samples drawn from it.

    run = open_run("runs/small-…")                         # model, training config, n_bits, …
    images = sample_images(run, n=16, temperature=0.7, seed=0)

Model space and image space: the model works on x = quantize(image) in [−0.5, 0.5), the lower edge
of each 1/2^b bin. Images go in at the bin's centre (`to_model`: + half a bin, the mean of the
training noise) and come out by the inverse (`from_model`: − half a bin, then to [0, 1]), so an
image passed through unchanged comes back as its quantised self.

Non-finite outputs (a Glow's inverse can overflow at high temperature) stay NaN in image space:
they are counted, drawn as a checkerboard by `images.grid`, and left out of every statistic, with
the count printed beside it.
"""

import math
import os
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..flow.preprocess import from_model
from ..render.images import finite_mask
from ..render.sheets import labelled_grid
from ..seeding import generator
from ..training.checkpoint import load_model


@dataclass
class Run:
    model: torch.nn.Module
    config: dict  # the training config ({} for an imported rosinality checkpoint)
    path: str
    image_size: int
    n_bits: int
    square: int = None  # trained square side (None when unknown)

    def need_dataset(self):
        missing = [k for k in ("data", "square") if k not in self.config]
        if missing:
            what = (
                "no training config (an imported checkpoint)"
                if not self.config
                else f"a training config without {' and '.join(missing)}"
            )
            raise UserError(
                f"{self.path} carries {what}, so its dataset and squares are unknown; "
                "use a checkpoint written by `missingglow train`"
            )

    def with_dataset(self, data, square):
        """This run, its held-out dataset known: a missingglow run's own, or for an imported
        checkpoint `data` with one K×K square per image (K = `square`), placed as training
        would. The CLI's --data and --square. A run trained without squares (the clean upper
        bound of a comparison) takes --square too: its held-out images get the squares a run with
        its seed and that K would have drawn."""
        if self.config and square is not None and data is None and self.config.get("square") == 0:
            if not 0 < square <= self.image_size:
                raise UserError(
                    f"--square {square} does not fit the run's {self.image_size}×"
                    f"{self.image_size} images; give 1 to {self.image_size}"
                )
            self.config.update(square=square, squares=self.config.get("squares") or 1)
            self.square = square
            return self
        if self.config:
            if data is not None or square is not None:
                raise UserError(
                    f"--data and --square are for an imported checkpoint; {self.path} "
                    "was trained by `missingglow train` on its own dataset and "
                    "squares, which are used: leave both out"
                )
            self.need_dataset()
            return self
        if square is None:
            raise UserError(
                f"{self.path} is an imported checkpoint without a training config, so "
                "its dataset and squares are unknown; give the square side with "
                "--square K (and its images with --data DIR; default: the synthetic "
                "faces)"
            )
        if square < 1:
            raise UserError(f"--square must be at least 1, not {square}")
        if square > self.image_size:
            raise UserError(
                f"--square {square} does not fit the checkpoint's {self.image_size}×"
                f"{self.image_size} images; give at most {self.image_size}"
            )
        self.config.update(data=data, square=square, squares=1, seed=0, image_size=self.image_size)
        self.square = square
        return self


def open_run(path, square=None):
    """Load a checkpoint (run folder or file) for analysis; UserErrors for anything foreign."""
    model, payload = load_model(path)
    config = dict(payload.get("config") or {}) if payload else {}
    size = model.image_size
    k = square if square is not None else config.get("square")
    if k and not 0 < k <= size:  # 0: a run trained without squares
        raise UserError(f"square size {k} does not fit {size}×{size} images")
    return Run(model, config, path, size, int(config.get("n_bits", 5)), k or None)


@torch.no_grad()
def sample_images(run, n, temperature, seed, batch=64):
    """n samples at temperature t as [0, 1] images (non-finite samples all-NaN). The samples of
    (seed, t) do not depend on which other temperatures are asked for."""
    gen = generator(seed, "sample", f"{temperature:.6g}")
    out = []
    for start in range(0, n, batch):
        x = run.model.sample(min(batch, n - start), temperature, generator=gen)
        out.append(from_model(x.cpu(), run.n_bits))
    return torch.cat(out)


def newest_run(root="runs"):
    """The run folder under `root` whose `latest` checkpoint pointer was written last."""
    from ..training.checkpoint import LATEST

    runs = []
    if os.path.isdir(root):
        for name in os.listdir(root):
            pointer = os.path.join(root, name, LATEST)
            if os.path.isfile(pointer):
                runs.append((os.path.getmtime(pointer), os.path.join(root, name)))
    if not runs:
        raise UserError(
            f"no --checkpoint given and no trained run under ./{root}/; train one with "
            "`missingglow train` or pass --checkpoint RUN"
        )
    return max(runs)[1]


def sample_sheet(run, temperatures, n, seed, columns=None, min_tile=32):
    """Samples per temperature as one labelled grid: a row per temperature (n per row) when
    several temperatures are asked for, else n samples in rows of `columns`.
    Returns (PIL image, [(t, non-finite count)])."""
    rows, labels, bad = [], [], []
    for t in temperatures:
        images = sample_images(run, n, t, seed)
        bad.append((t, int((~finite_mask(images)).sum())))
        per_row = n if len(temperatures) > 1 else (columns or max(1, math.ceil(math.sqrt(n))))
        for i in range(0, n, per_row):
            rows.append(images[i : i + per_row])
            labels.append(f"t={t:g}" if i == 0 else "")
    return labelled_grid(rows, labels, min_tile)[0], bad
