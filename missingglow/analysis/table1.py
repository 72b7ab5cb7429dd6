"""The paper's Table 1: grey squares counted in samples at each temperature, against t².

rows = square_table(run, [0.1, 0.2, …, 1.5], n=50, seed=0)
print(format_table1(rows))
recall = detector_recall(run)                  # how many faint squares the counter finds
print(format_recall(recall))
write_table1(rows, table1_folder("runs/X"), recall)   # table1.csv, table1.png, contact sheet
"""

import os

from ..atomic import write_csv
from ..training.config import PAPER_SIZE, TrainConfig
from .runs import sample_images
from .square_bank import faint_faces, faint_scores
from .squares import detect, detector_sizes_for

BUCKETS = ("0", "1", "2", "3", "4+")

# The counter's recall printed beside every Table 1: squares blended at these opacities, with hard
# and with feathered edges, on synthetic faces at the run's image and square size.
RECALL_OPACITIES = (1.0, 0.85, 0.7, 0.5)
RECALL_FEATHERS = (0, 2)
RECALL_SEED = 7  # a seed no tuning of the counter has seen
RECALL_FACES = 24  # faces with 1–3 squares each, and half as many with none


def detector_sizes(run, image_size=None):
    return detector_sizes_for(run.square, image_size or run.image_size)


def tally(found):
    """One Table 1 column from detect()'s output: finite and non-finite samples, samples per bucket
    (0, 1, 2, 3, 4 or more squares), shares (%) and the empirical E (mean squares per sample) over
    the finite ones; E counts every square, so 4+ adds its true counts, not 4."""
    counts = [len(f) for f in found if f is not None]
    buckets = [0] * len(BUCKETS)
    for c in counts:
        buckets[min(c, len(BUCKETS) - 1)] += 1
    finite = len(counts)
    return {
        "finite": finite,
        "nonfinite": len(found) - finite,
        "counts": buckets,
        "shares": [100 * b / finite if finite else float("nan") for b in buckets],
        "E": sum(counts) / finite if finite else float("nan"),
    }


def square_table(run, temperatures, n, seed, batch=64, keep=16, say=None):
    """Sample n images per temperature, count squares. One dict per t with the counts per bucket
    (over finite samples), shares (%), empirical E, theoretical t², and the non-finite count; also
    the first `keep` samples and their detections for the contact sheet."""
    sizes = detector_sizes(run)
    rows = []
    for t in temperatures:
        images = sample_images(run, n, t, seed, batch)
        found = detect(images, sizes)
        rows.append(
            {
                "t": t,
                "n": n,
                **tally(found),
                "theory": t * t,
                "images": images[:keep],
                "found": found[:keep],
            }
        )
        if say:
            say(
                f"t={t:g}: {rows[-1]['finite']}/{n} finite samples, mean {rows[-1]['E']:.2f} "
                "squares"
            )
    return rows


def format_table1(rows):
    """The paper's Table 1 layout: one column per temperature."""
    head = f"{'temperature t':<22}" + "".join(f"{r['t']:>7g}" for r in rows)
    lines = [head, "frequency (% of finite samples)"]
    for i, name in enumerate(BUCKETS):
        label = f"{name} square{'s' if name != '1' else ''}"
        lines.append(
            f"{label:<22}"
            + "".join(f"{r['shares'][i]:>7.0f}" if r["finite"] else f"{'—':>7}" for r in rows)
        )
    lines.append(
        f"{'empirical E':<22}"
        + "".join(f"{r['E']:>7.2f}" if r["finite"] else f"{'—':>7}" for r in rows)
    )
    lines.append(f"{'theoretical E = t²':<22}" + "".join(f"{r['theory']:>7.2f}" for r in rows))
    lines.append(f"{'non-finite samples':<22}" + "".join(f"{r['nonfinite']:>7d}" for r in rows))
    lines.append(f"{'samples per t':<22}" + "".join(f"{r['n']:>7d}" for r in rows))
    return "\n".join(lines)


def recall_square(run, image_size):
    """The square side to measure the recall at: the run's, else (a run trained without squares,
    or an imported one) the default square scaled to the image, as training would scale it."""
    return run.square or max(1, round(TrainConfig.square * image_size / PAPER_SIZE))


def detector_recall(run, image_size=None):
    """How many faint squares the counter finds, measured now, at the run's image size and with
    the sizes Table 1 searches: recall per (opacity, feather) of RECALL_OPACITIES × RECALL_FEATHERS
    on synthetic faces (square_bank.faint_faces, seed RECALL_SEED), and the square-free faces
    with a false square. Synthetic faces only: the photo bank is an optional extra."""
    size = image_size or run.image_size
    square = recall_square(run, size)
    sizes = detector_sizes(run, size)
    faces = faint_faces(RECALL_SEED, size, square, RECALL_FACES, RECALL_FACES // 2)
    scores = faint_scores(
        lambda batch: detect(batch, sizes), faces, RECALL_OPACITIES, RECALL_FEATHERS
    )
    free = scores.pop((None, None))
    return {
        "size": size,
        "square": square,
        "square_given": bool(run.square),
        "squares": scores[1.0, 0]["squares"],
        "free_fired": free["free_fired"],
        "recall": {key: r["recall"] for key, r in scores.items()},
    }


def _feather_label(feather):
    return "hard edges" if feather == 0 else f"edges feathered {feather} px"


def format_recall(recall):
    """The recall lines printed under Table 1, laid out like it."""
    k = recall["square"]
    what = f"K = {k}" if recall["square_given"] else f"K = {k}, all sizes searched"
    lines = [
        f"share of faint squares the counter finds (synthetic faces, {recall['size']} px, "
        f"{what}, {recall['squares']} squares, seed {RECALL_SEED})",
        f"{'opacity':<22}" + "".join(f"{f'{100 * o:.0f} %':>7}" for o in RECALL_OPACITIES),
    ]
    for feather in RECALL_FEATHERS:
        lines.append(
            f"{_feather_label(feather):<22}"
            + "".join(f"{recall['recall'][o, feather]:>7.2f}" for o in RECALL_OPACITIES)
        )
    fired, faces = recall["free_fired"]
    lines += [
        f"square-free faces with a false square: {fired} of {faces}",
        "faint squares in samples are counted only as often as this says (docs/detector.md)",
    ]
    return "\n".join(lines)


def recall_columns(recall):
    """Table 1's CSV columns for the recall (the same on every row): header and values."""
    keys = [(o, f) for f in RECALL_FEATHERS for o in RECALL_OPACITIES]
    header = (
        ["recall_square", "recall_squares"]
        + [f"recall_{100 * o:.0f}pct_feather{f}" for o, f in keys]
        + ["recall_free_faces", "recall_free_fired"]
    )
    fired, faces = recall["free_fired"]
    values = (
        [recall["square"], recall["squares"]]
        + [f"{recall['recall'][key]:.4f}" for key in keys]
        + [faces, fired]
    )
    return header, values


def recall_note(recall):
    """One line for the plot: the recall with hard edges at each opacity."""
    cells = " · ".join(f"{100 * o:.0f} % {recall['recall'][o, 0]:.2f}" for o in RECALL_OPACITIES)
    return (
        f"share of faint squares counted at {recall['size']} px, K {recall['square']}, by "
        f"opacity: {cells}"
    )


def table1_csv(path, rows, recall=None):
    header = (
        ["t", "samples", "finite", "nonfinite"]
        + [f"count_{b}" for b in BUCKETS]
        + [f"share_{b}_pct" for b in BUCKETS]
        + ["empirical_E", "theoretical_E"]
    )
    body = [
        [
            r["t"],
            r["n"],
            r["finite"],
            r["nonfinite"],
            *r["counts"],
            *(f"{s:.2f}" for s in r["shares"]),
            f"{r['E']:.4f}",
            f"{r['theory']:.4f}",
        ]
        for r in rows
    ]
    if recall is not None:
        extra, values = recall_columns(recall)
        header, body = header + extra, [row + values for row in body]
    return write_csv(path, header, body)


def table1_plot(rows, recall=None):
    """Empirical E against t² (top), shares per bucket against t (bottom, with the counter's
    recall in its note, when given)."""
    from ..render.plot import Series, line_chart, stack

    ts = [r["t"] for r in rows]
    bad = sum(r["nonfinite"] for r in rows)
    note = f"{bad} non-finite samples left out" if bad else None
    top = line_chart(
        [
            Series("empirical E", ts, [r["E"] for r in rows]),
            Series("theoretical E = t²", ts, [r["theory"] for r in rows], dashed=True),
        ],
        title="Grey squares per sample",
        xlabel="temperature t",
        ylabel="mean squares per sample",
        note=note,
    )
    bottom = line_chart(
        [
            Series(f"{b} square{'s' if b != '1' else ''}", ts, [r["shares"][i] for r in rows])
            for i, b in enumerate(BUCKETS)
        ],
        title="Share of samples by number of squares",
        xlabel="temperature t",
        ylabel="% of finite samples",
        ylim=(0, 100),
        note=None if recall is None else recall_note(recall),
    )
    return stack([top, bottom])


def table1_folder(checkpoint):
    """Where Table 1 goes when no folder is given: beside the run (`<run folder>/table1`), or
    `./table1` for a checkpoint file."""
    return os.path.join(checkpoint, "table1") if os.path.isdir(checkpoint) else "table1"


def write_table1(rows, out, recall=None):
    """Table 1's CSV, its plot and the contact sheet (the first samples per t with the detected
    squares outlined) into folder `out`, with the counter's recall (detector_recall) when given;
    returns the paths written."""
    from ..render.images import save_png
    from ..render.sheets import contact_sheet

    sheet, _ = contact_sheet(
        [(r["images"], r["found"]) for r in rows], [f"t={r['t']:g}" for r in rows]
    )
    return [
        table1_csv(os.path.join(out, "table1.csv"), rows, recall),
        save_png(table1_plot(rows, recall), os.path.join(out, "table1.png")),
        save_png(sheet, os.path.join(out, "contact-sheet.png")),
    ]
