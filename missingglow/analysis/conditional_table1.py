"""Table 1 given a picture: how often the posterior fills a held-out image's hole with grey.

A model trained on images with grey squares has learnt that part of an image can be a grey square,
so its posterior over a hole's pixels may put mass on "the hole is grey". Table 1 counts squares
in unconditional samples; this table counts grey holes among completions of held-out images whose
training square(s) are the hole:

    plan = plan_conditional(run, [0.3, 0.5, 1.0], n=100, samples=4)   # checks, before any work
    table = conditional_table(plan, seed=0)
    print(format_conditional(table))
    write_conditional([table], "out")   # conditional_table1.csv and .png, and a sheet of examples

Each completion is a draw of the posterior sampler (completion/posterior.py) at prior temperature
t, its chain started at invert's MAP completion (impute.map_and_draws: once for the MAP, then from
the MAP's image at each t); the MAP is a row of its own. Two verdicts per completion, shares over
the finite completions:

- by the detector: a grey square it finds (analysis/squares.py, searching the sizes around the
  run's square) matches a square of the hole with IoU ≥ 0.5 (square_bank.match); with several
  squares per image one is enough. It misses faint squares (docs/detector.md), so its recall is
  measured and printed beside the table.
- by the pixels, needing no detector (`grey_fraction`): at least GREY_SHARE of the hole's pixels
  lie within GREY_TOLERANCE (one 5-bit level) of the grey a training hole shows once through the
  model's preprocessing (`hole_grey`), in every channel.

Chains are short by default (evaluate's), so completions stay near the MAP they start from: a
share is the posterior's only as far as the chains have moved, and the MAP row says where they
started.
"""

import os
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..flow.preprocess import from_model, to_model
from ..render.images import finite_mask
from .evaluate import SAMPLING_DEFAULTS
from .square_bank import match
from .squares import detect, detector_sizes_for

# A hole pixel is grey when every channel lies within one 5-bit level of the hole's grey, and a
# hole is grey when this share of its pixels is: a grey fill with the model's sampling noise
# passes, a textured fill or one grey on only part of the hole does not.
GREY_TOLERANCE = 1 / 32
GREY_SHARE = 0.9
SAMPLES = 4  # completions per image and temperature
# evaluate's short chains: minutes on a CPU, not convergence
WARMUP, STEPS = SAMPLING_DEFAULTS["warmup"], SAMPLING_DEFAULTS["steps"]
MAP = "MAP"  # the row of invert's completion, which has no temperature
EXAMPLES = 8  # images per run on the sheet of examples
CSV_NAME, PLOT_NAME, SHEET_NAME = (
    "conditional_table1.csv",
    "conditional_table1.png",
    "conditional-completions.png",
)


def hole_grey(n_bits):
    """The grey of a training hole as the model shows it: GREY through to_model and back, the
    value a grey-filling model's completions sit at (its 5-bit bin's centre)."""
    from ..data.masks import GREY

    return from_model(to_model(torch.full((1, 3, 1, 1), GREY), n_bits), n_bits)[0, 0, 0, 0].item()


def grey_fraction(images, missing, n_bits):
    """Per image of (N, 3, S, S) in [0, 1]: the share of its hole's pixels (`missing`, (N or 1, 1,
    S, S)) whose every channel lies within GREY_TOLERANCE of hole_grey; NaN for a non-finite
    image."""
    near = ((images - hole_grey(n_bits)).abs() <= GREY_TOLERANCE).all(1, keepdim=True)
    hole = missing.expand(images.shape[0], 1, *images.shape[2:])
    share = (near & hole).flatten(1).sum(1).double() / hole.flatten(1).sum(1).clamp_min(1)
    return torch.where(finite_mask(images), share, torch.full_like(share, float("nan")))


def grey_by_pixels(images, missing, n_bits):
    """Per image: True when its hole is grey by the pixel rule, None for a non-finite image."""
    return [
        None if share != share else share >= GREY_SHARE
        for share in grey_fraction(images, missing, n_bits).tolist()
    ]


def grey_by_detector(found, holes):
    """Per image: True when one of the detector's squares (detect()'s output) matches a square of
    its hole (a list of (top, left, K) per image), None for a non-finite image."""
    return [
        None if squares is None else match(squares, boxes)[0] > 0
        for squares, boxes in zip(found, holes, strict=True)
    ]


def check_run(run):
    """A UserError unless the run was trained on grey squares of its own dataset: their places in
    the held-out images are the holes to complete."""
    run.need_dataset()
    c = run.config
    if c.get("masks"):
        raise UserError(
            f"{run.path} was trained on its images' own holes (--masks), not on grey "
            "squares; --posterior completes grey squares"
        )
    if not (c.get("square") and c.get("squares", 1)):
        raise UserError(
            f"{run.path} was trained without grey squares, so its held-out images have no "
            "hole to complete; give a run trained with squares"
        )


def check_request(temperatures, n, samples, warmup=WARMUP, steps=STEPS):
    """A UserError for what no run could answer: no temperature, t ≤ 0 (the prior N(0, t²·I)
    needs t > 0), n or samples below 1, negative chain lengths."""
    if not temperatures:
        raise UserError("give at least one temperature")
    low = [t for t in temperatures if not t > 0]
    if low:
        raise UserError(
            "temperatures for completions must be above 0 (the posterior's prior is "
            f"N(0, t²·I)), not {', '.join(f'{t:g}' for t in low)}"
        )
    if n < 1:
        raise UserError(f"-n counts held-out images to complete: at least 1, not {n}")
    if samples < 1:
        raise UserError(f"--samples counts completions per image: at least 1, not {samples}")
    if warmup < 0 or steps < 0:
        raise UserError(f"chain lengths must be 0 or more, not warmup {warmup}, steps {steps}")


@dataclass
class Plan:
    """One run's conditional table, checked and sized before any work."""

    run: object  # analysis.runs.Run
    heldout: object  # data.datasets.MaskedImages of the held-out split
    temperatures: list
    n: int  # held-out images to complete (at most the split's)
    samples: int
    warmup: int
    steps: int
    batch: int

    @property
    def total_steps(self):
        """Optimiser and MALA steps, each counted once per batch: what on_step counts."""
        from ..completion.invert import DEFAULTS

        batches = -(-self.n // self.batch)
        return batches * (DEFAULTS["steps"] + len(self.temperatures) * (self.warmup + self.steps))


def plan_conditional(
    run, temperatures, n, samples=SAMPLES, warmup=WARMUP, steps=STEPS, batch=50, say=None
):
    """Check the request and the run, open its held-out split: a Plan, or a UserError. A
    temperature given twice is one row."""
    from ..data.datasets import dataset_of, masked_images_of

    check_request(temperatures, n, samples, warmup, steps)
    check_run(run)
    heldout = masked_images_of(run.config, dataset_of(run.config, run.image_size), "heldout")
    if n > len(heldout) and say:
        say(f"{run.path}: the held-out split has {len(heldout)} images; completing all of them")
    n = min(n, len(heldout))
    ts = list(dict.fromkeys(temperatures))
    return Plan(run, heldout, ts, n, samples, warmup, steps, batch)


class _Tally:
    """One row's verdicts and acceptances, gathered batch by batch."""

    def __init__(self):
        self.detector, self.pixels, self.acceptance = [], [], []

    def judge(self, images, missing, holes, sizes, n_bits):
        self.detector += grey_by_detector(detect(images, sizes), holes)
        self.pixels += grey_by_pixels(images, missing, n_bits)

    def row(self, t, images):
        finite = sum(v is not None for v in self.pixels)
        counts = sum(bool(v) for v in self.detector), sum(bool(v) for v in self.pixels)
        shares = [100 * k / finite if finite else float("nan") for k in counts]
        rates = torch.cat(self.acceptance) if self.acceptance else torch.zeros(0)
        return {
            "t": t,
            "images": images,
            "completions": len(self.pixels),
            "finite": finite,
            "nonfinite": len(self.pixels) - finite,
            "detector": counts[0],
            "pixels": counts[1],
            "share_detector": shares[0],
            "share_pixels": shares[1],
            "acceptance": rates.nanmean().item() if rates.numel() else float("nan"),
        }


def conditional_table(plan, seed=0, on_step=None, say=None):
    """Complete the plan's held-out images, their training squares the hole: invert's MAP, and
    `samples` posterior draws per image at each temperature (γ and the search as invert's
    DEFAULTS, the plan's chain lengths). The draws of (seed, t, image batch) do not depend on which
    other temperatures are asked for. `on_step()` is called after every invert and MALA step,
    plan.total_steps in all.

    Returns {"run", "rows" (the MAP's first, t None; then one per t), "images", "samples",
    "warmup", "steps", "gamma", "square", "examples": [(label, images, detected squares)]}."""
    from ..completion.invert import DEFAULTS
    from ..completion.posterior import posterior_samples
    from ..seeding import generator
    from .impute import map_and_draws

    run, heldout, ts = plan.run, plan.heldout, plan.temperatures
    bits, square = run.n_bits, heldout.square
    sizes = detector_sizes_for(square, run.image_size)
    tick = None if on_step is None else (lambda i: on_step())
    tallies = {MAP: _Tally(), **{t: _Tally() for t in ts}}
    examples = {}
    for start in range(0, plan.n, plan.batch):
        js = list(range(start, min(start + plan.batch, plan.n)))
        masked, _, positions = heldout.batch(js)
        missing = heldout.missing(js)
        holes = [[(top, left, square) for top, left in p.tolist()] for p in positions]
        x = to_model(masked, bits, run.model.in_channels)
        if start == 0:
            examples["input"] = from_model(x[:EXAMPLES], bits)
        best = map_and_draws(run.model, x, missing, 0, None, tick)[0]  # invert's MAP, once
        shown = from_model(best, bits)
        tallies[MAP].judge(shown, missing, holes, sizes, bits)
        examples.setdefault(MAP, shown[:EXAMPLES])
        reps = plan.samples
        for t in ts:  # chains from Φ(MAP completion): invert runs once per image, not once per t
            gen = generator(seed, "conditional-table1", f"{t:.6g}", start)
            draws, diagnostics = posterior_samples(
                run.model,
                best,
                missing,
                reps,
                gamma=DEFAULTS["gamma"],
                temperature=t,
                warmup=plan.warmup,
                steps=plan.steps,
                generator=gen,
                start=best,
                on_step=tick,
            )
            images = from_model(draws.flatten(0, 1), bits)  # draw k of image b at k·B + b
            tallies[t].judge(images, missing.repeat(reps, 1, 1, 1), holes * reps, sizes, bits)
            tallies[t].acceptance.append(diagnostics.acceptance.flatten())
            examples.setdefault(t, images[: len(examples["input"])])
        if say:
            say(f"{run.path}: completed {js[-1] + 1}/{plan.n} held-out images")
    rows = [tallies[MAP].row(None, plan.n)] + [tallies[t].row(t, plan.n) for t in ts]
    labels = ["input", MAP, *ts]
    return {
        "run": run.path,
        "rows": rows,
        "images": plan.n,
        "samples": plan.samples,
        "warmup": plan.warmup,
        "steps": plan.steps,
        "gamma": DEFAULTS["gamma"],
        "square": square,
        "image_size": run.image_size,
        "examples": [
            (k if isinstance(k, str) else f"t={k:g}", examples[k], detect(examples[k], sizes))
            for k in labels
        ],
    }


def _t_label(row):
    return MAP if row["t"] is None else f"{row['t']:g}"


def _cells(rows, value, width=7):
    return "".join(f"{'—' if not r['finite'] else value(r):>{width}}" for r in rows)


def format_conditional(table):
    """One run's table in Table 1's layout: a column for the MAP, then one per temperature."""
    rows = table["rows"]
    lines = [
        f"{table['run']}: {table['images']} held-out images, their {table['square']}-px "
        f"square(s) the hole; {table['samples']} completions per image and t (MALA, "
        f"{table['warmup']} + {table['steps']} steps from invert's MAP, γ {table['gamma']:g})",
        f"{'temperature t':<26}" + "".join(f"{_t_label(r):>7}" for r in rows),
        "holes filled grey (% of finite completions)",
        f"{'  by the detector':<26}" + _cells(rows, lambda r: f"{r['share_detector']:.0f}"),
        f"{'  by the pixels':<26}" + _cells(rows, lambda r: f"{r['share_pixels']:.0f}"),
        f"{'completions':<26}" + "".join(f"{r['completions']:>7d}" for r in rows),
        f"{'non-finite completions':<26}" + "".join(f"{r['nonfinite']:>7d}" for r in rows),
        f"{'MALA acceptance':<26}"
        + "".join(
            f"{'—':>7}" if r["acceptance"] != r["acceptance"] else f"{r['acceptance']:>7.2f}"
            for r in rows
        ),
    ]
    return "\n".join(lines)


RULE = (  # what the two verdicts mean, under the table and the chart
    "grey by the detector: a grey square found on the hole (IoU ≥ 0.5)",
    f"grey by the pixels: ≥ {100 * GREY_SHARE:.0f} % of the hole's pixels within "
    f"1/{round(1 / GREY_TOLERANCE)} of its grey ({255 * hole_grey(5):.0f}/255 at 5 bits) in "
    "every channel",
)

CSV_HEADER = [
    "run",
    "temperature",
    "images",
    "completions",
    "finite",
    "nonfinite",
    "grey_detector",
    "grey_pixels",
    "share_detector_pct",
    "share_pixels_pct",
    "acceptance",
    "samples_per_image",
    "warmup",
    "steps",
    "gamma",
]


def conditional_csv(path, tables, recalls=None):
    """Every run's rows, the MAP's temperature written MAP; with `recalls` (one detector_recall
    per table) Table 1's recall columns, the same on each of a run's rows."""
    from ..atomic import write_csv
    from .table1 import recall_columns

    header, body = list(CSV_HEADER), []
    for i, table in enumerate(tables):
        extra = recall_columns(recalls[i]) if recalls else ([], [])
        if i == 0:
            header += extra[0]
        for r in table["rows"]:
            body.append(
                [
                    table["run"],
                    _t_label(r),
                    r["images"],
                    r["completions"],
                    r["finite"],
                    r["nonfinite"],
                    r["detector"],
                    r["pixels"],
                    f"{r['share_detector']:.2f}",
                    f"{r['share_pixels']:.2f}",
                    f"{r['acceptance']:.4f}",
                    table["samples"],
                    table["warmup"],
                    table["steps"],
                    table["gamma"],
                    *extra[1],
                ]
            )
    return write_csv(path, header, body)


def run_names(tables):
    """Short names for the runs: their folder or file names, the paths where those clash."""
    short = [os.path.basename(os.path.normpath(t["run"])) or t["run"] for t in tables]
    return short if len(set(short)) == len(short) else [t["run"] for t in tables]


def conditional_plot(tables, recalls=None):
    """Share of grey completions against t: a colour per run, the detector's line solid and the
    pixels' dashed; the MAP's shares and the detector's recall in lines under the chart."""
    from ..render.plot import PALETTE, Series, line_chart, stack, text_lines
    from .table1 import recall_note

    series, notes = [], []
    for i, (name, table) in enumerate(zip(run_names(tables), tables, strict=True)):
        colour = PALETTE[i % len(PALETTE)]
        rows = [r for r in table["rows"] if r["t"] is not None]
        ts = [r["t"] for r in rows]
        series += [
            Series(f"{name}: detector", ts, [r["share_detector"] for r in rows], colour=colour),
            Series(
                f"{name}: pixels",
                ts,
                [r["share_pixels"] for r in rows],
                dashed=True,
                colour=colour,
            ),
        ]
        first = table["rows"][0]
        notes.append(
            f"{name}: MAP completion grey in {first['share_detector']:.0f} % (detector), "
            f"{first['share_pixels']:.0f} % (pixels) of {first['finite']} images"
        )
        if recalls:
            notes.append(f"{name}: {recall_note(recalls[i])}")
    bad = sum(r["nonfinite"] for t in tables for r in t["rows"])
    chart = line_chart(
        series,
        title="Held-out holes filled grey by posterior completions",
        xlabel="temperature t",
        ylabel="% of finite completions",
        ylim=(0, 100),
        note=f"{bad} non-finite completions left out" if bad else None,
    )
    return stack([chart, text_lines(notes + list(RULE), chart.size[0])], gap=0)


def examples_sheet(tables):
    """Per run, the first held-out inputs, their MAP completion and one completion per t, with
    the detector's squares outlined."""
    from ..render.plot import stack
    from ..render.sheets import contact_sheet

    sheets = []
    for name, table in zip(run_names(tables), tables, strict=True):
        rows = [(images, found) for _, images, found in table["examples"]]
        labels = [f"{name}: {label}" for label, _, _ in table["examples"]]
        sheets.append(contact_sheet(rows, labels)[0])
    return stack(sheets)


def detector_recalls(runs):
    """table1.detector_recall per run, measured once for runs of the same image and square size."""
    from .table1 import detector_recall

    measured = {}
    for run in runs:
        key = (run.image_size, run.square)
        if key not in measured:
            measured[key] = detector_recall(run)
    return [measured[run.image_size, run.square] for run in runs]


def write_conditional(tables, out, recalls=None):
    """conditional_table1.csv, its chart and the sheet of examples into folder `out`; returns the
    paths written."""
    from ..render.images import save_png

    return [
        conditional_csv(os.path.join(out, CSV_NAME), tables, recalls),
        save_png(conditional_plot(tables, recalls), os.path.join(out, PLOT_NAME)),
        save_png(examples_sheet(tables), os.path.join(out, SHEET_NAME)),
    ]
