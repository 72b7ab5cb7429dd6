"""What the analysis commands share, and the paper's Table 1 (squares per sample against t²).

    run = open_run("runs/small-…")                         # model, training config, n_bits, …
    rows = square_table(run, [0.1, 0.2, …, 1.5], n=50, seed=0)
    print(format_table1(rows))

Model space and image space: the model works on x = quantize(image) in [−0.5, 0.5), the lower edge
of each 1/2^b bin. Images go in at the bin's centre (`to_model`: + half a bin, the mean of the
training noise) and come out by the inverse (`from_model`: − half a bin, then to [0, 1]), so an
image passed through unchanged comes back as its quantised self.

Non-finite outputs (a Glow's inverse can overflow at high temperature) stay NaN in image space:
they are counted, drawn as a checkerboard by `images.grid`, and left out of every statistic, with
the count printed beside it.
"""
import csv
import math
import os
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..data.images import finite_mask
from ..flow.preprocess import from_model
from ..seeding import generator

DEFAULT_TEMPERATURES = "0.1:1.5:0.1"
BUCKETS = ("0", "1", "2", "3", "4+")


# --- parsing what users type ------------------------------------------------------------------------

def parse_values(text, what):
    """'0.5', '0.1,0.2,0.3' or a range 'START:STOP:STEP' (STOP included) → list of floats."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3 or not all(math.isfinite(p) for p in parts) or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count < 1 or count > 10_000:
                raise ValueError
            return [round(start + i * step, 10) for i in range(count)]
        values = [float(p) for p in text.split(",") if p.strip()]
        if not values:
            raise ValueError
        return values
    except ValueError:
        raise UserError(f"{what} must be a number, a list like 0.1,0.5 or a range like 0.1:1.0:0.1 "
                        f"(start:stop:step), not {text!r}") from None


def parse_alphas(text):
    """Alphas in (0, 1]: a latent scaled by more than 1 or by 0 or less is no imputation."""
    values = parse_values(text, "alpha")
    for a in values:
        if not (math.isfinite(a) and 0 < a <= 1):
            raise UserError(f"alpha must lie in (0, 1] (1 gives the input back), not {a:g}")
    return values


def parse_temperatures(text):
    values = parse_values(text, "temperature")
    for t in values:
        if not (math.isfinite(t) and t >= 0):
            raise UserError(f"temperature must be a finite number of 0 or more, not {t:g}")
    return values


def check_positive(n, what):
    if n is None or n < 1:
        raise UserError(f"{what} must be at least 1, not {n}")
    return n


def parse_square(text):
    """'TOP,LEFT,SIZE' → (top, left, size)."""
    try:
        top, left, size = (int(p) for p in str(text).split(","))
    except ValueError:
        raise UserError(f"--square takes TOP,LEFT,SIZE in pixels (e.g. 10,20,12), not {text!r}") from None
    if top < 0 or left < 0 or size < 1:
        raise UserError(f"--square {text}: top and left must be 0 or more and size at least 1")
    return top, left, size


# --- a trained run ------------------------------------------------------------------------------------

@dataclass
class Run:
    model: torch.nn.Module
    config: dict            # the training config ({} for an imported rosinality checkpoint)
    path: str
    image_size: int
    n_bits: int
    square: int = None      # trained square side (None when unknown)

    def need_dataset(self):
        missing = [k for k in ("data", "square") if k not in self.config]
        if missing:
            what = "no training config (an imported checkpoint)" if not self.config else \
                f"a training config without {' and '.join(missing)}"
            raise UserError(f"{self.path} carries {what}, so its dataset and squares are unknown; "
                            "use a checkpoint written by `missingglow train`")


def open_run(path, square=None):
    """Load a checkpoint (run folder or file) for analysis; UserErrors for anything foreign."""
    from ..checkpoint import load_model

    model, payload = load_model(path)
    config = dict(payload.get("config") or {}) if payload else {}
    size = model.image_size
    k = square if square is not None else config.get("square")
    if k is not None and not 0 < k <= size:
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


# --- Table 1 ------------------------------------------------------------------------------------------

def detector_sizes(run, image_size=None):
    from .squares import detector_sizes_for

    return detector_sizes_for(run.square, image_size or run.image_size)


def square_table(run, temperatures, n, seed, batch=64, keep=16, say=None):
    """Sample n images per temperature, count squares. One dict per t with the counts per bucket
    (over finite samples), shares (%), empirical E, theoretical t², and the non-finite count; also
    the first `keep` samples and their detections for the contact sheet."""
    from .squares import detect

    sizes = detector_sizes(run)
    rows = []
    for t in temperatures:
        images = sample_images(run, n, t, seed, batch)
        found = detect(images, sizes)
        counts = [len(f) for f in found if f is not None]
        buckets = [0] * len(BUCKETS)
        for c in counts:
            buckets[min(c, 4)] += 1
        finite = len(counts)
        rows.append({
            "t": t, "n": n, "finite": finite, "nonfinite": n - finite,
            "counts": buckets,
            "shares": [100 * b / finite if finite else float("nan") for b in buckets],
            "E": sum(counts) / finite if finite else float("nan"),
            "theory": t * t,
            "images": images[:keep], "found": found[:keep],
        })
        if say:
            say(f"t={t:g}: {finite}/{n} finite samples, mean {rows[-1]['E']:.2f} squares")
    return rows


def format_table1(rows):
    """The paper's Table 1 layout: one column per temperature."""
    head = f"{'temperature t':<22}" + "".join(f"{r['t']:>7g}" for r in rows)
    lines = [head, "frequency (% of finite samples)"]
    for i, name in enumerate(BUCKETS):
        label = f"{name} square{'s' if name != '1' else ''}"
        lines.append(f"{label:<22}" + "".join(
            f"{r['shares'][i]:>7.0f}" if r["finite"] else f"{'—':>7}" for r in rows))
    lines.append(f"{'empirical E':<22}" + "".join(
        f"{r['E']:>7.2f}" if r["finite"] else f"{'—':>7}" for r in rows))
    lines.append(f"{'theoretical E = t²':<22}" + "".join(f"{r['theory']:>7.2f}" for r in rows))
    lines.append(f"{'non-finite samples':<22}" + "".join(f"{r['nonfinite']:>7d}" for r in rows))
    lines.append(f"{'samples per t':<22}" + "".join(f"{r['n']:>7d}" for r in rows))
    return "\n".join(lines)


def write_csv(path, header, rows):
    """A CSV file written atomically."""
    import io

    from ..checkpoint import atomic_write

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))
    return path


def table1_csv(path, rows):
    header = ["t", "samples", "finite", "nonfinite"] + [f"count_{b}" for b in BUCKETS] + \
             [f"share_{b}_pct" for b in BUCKETS] + ["empirical_E", "theoretical_E"]
    body = [[r["t"], r["n"], r["finite"], r["nonfinite"], *r["counts"],
             *(f"{s:.2f}" for s in r["shares"]), f"{r['E']:.4f}", f"{r['theory']:.4f}"]
            for r in rows]
    return write_csv(path, header, body)


def table1_plot(rows):
    """Empirical E against t² (top), shares per bucket against t (bottom)."""
    from .plot import Series, line_chart, stack

    ts = [r["t"] for r in rows]
    bad = sum(r["nonfinite"] for r in rows)
    note = f"{bad} non-finite samples left out" if bad else None
    top = line_chart([Series("empirical E", ts, [r["E"] for r in rows]),
                      Series("theoretical E = t²", ts, [r["theory"] for r in rows], dashed=True)],
                     title="Grey squares per sample", xlabel="temperature t",
                     ylabel="mean squares per sample", note=note)
    bottom = line_chart([Series(f"{b} square{'s' if b != '1' else ''}", ts,
                                [r["shares"][i] for r in rows]) for i, b in enumerate(BUCKETS)],
                        title="Share of samples by number of squares", xlabel="temperature t",
                        ylabel="% of finite samples", ylim=(0, 100))
    return stack([top, bottom])


def contact_sheet(rows, labels, min_tile=48):
    """Samples with their detected squares outlined: one row per entry of `rows` [(images, found)];
    non-finite samples as checkerboards. Returns (PIL image, non-finite count)."""
    from ..data.images import grid, to_pil
    from .plot import label_rows
    from .squares import outline

    size = rows[0][0].shape[-1]
    scale = max(1, -(-min_tile // size))
    tiles = []
    for images, found in rows:
        drawn = [outline(im, f) if f else im for im, f in zip(images, found)]
        batch = torch.stack(drawn)
        if scale > 1:
            batch = torch.nn.functional.interpolate(batch, scale_factor=scale, mode="nearest")
        tiles.append(batch)
    canvas, bad = grid(tiles)
    step = size * scale + 2
    return label_rows(to_pil(canvas), labels, 2, step), bad


def sample_sheet(run, temperatures, n, seed, columns=None, min_tile=32):
    """Samples per temperature as one labelled grid: a row per temperature (n per row) when
    several temperatures are asked for, else n samples in rows of `columns`.
    Returns (PIL image, [(t, non-finite count)])."""
    from ..data.images import grid, to_pil
    from .plot import label_rows

    size = run.image_size
    scale = max(1, -(-min_tile // size))
    rows, labels, bad = [], [], []
    for t in temperatures:
        images = sample_images(run, n, t, seed)
        bad.append((t, int((~finite_mask(images)).sum())))
        per_row = n if len(temperatures) > 1 else (columns or max(1, math.ceil(math.sqrt(n))))
        for i in range(0, n, per_row):
            chunk = images[i:i + per_row]
            if scale > 1:
                chunk = torch.nn.functional.interpolate(chunk, scale_factor=scale, mode="nearest")
            rows.append(chunk)
            labels.append(f"t={t:g}" if i == 0 else "")
    canvas, _ = grid(rows)
    return label_rows(to_pil(canvas), labels, 2, size * scale + 2), bad


def ensure_folder(path):
    os.makedirs(path, exist_ok=True)
    return path
