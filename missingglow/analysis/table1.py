"""The paper's Table 1: grey squares counted in samples at each temperature, against t².

    rows = square_table(run, [0.1, 0.2, …, 1.5], n=50, seed=0)
    print(format_table1(rows))
    write_table1(rows, table1_folder("runs/X"))   # table1.csv, table1.png, contact-sheet.png
"""
import os

from ..atomic import write_csv
from .runs import sample_images
from .squares import detect, detector_sizes_for

BUCKETS = ("0", "1", "2", "3", "4+")


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
    return {"finite": finite, "nonfinite": len(found) - finite, "counts": buckets,
            "shares": [100 * b / finite if finite else float("nan") for b in buckets],
            "E": sum(counts) / finite if finite else float("nan")}


def square_table(run, temperatures, n, seed, batch=64, keep=16, say=None):
    """Sample n images per temperature, count squares. One dict per t with the counts per bucket
    (over finite samples), shares (%), empirical E, theoretical t², and the non-finite count; also
    the first `keep` samples and their detections for the contact sheet."""
    sizes = detector_sizes(run)
    rows = []
    for t in temperatures:
        images = sample_images(run, n, t, seed, batch)
        found = detect(images, sizes)
        rows.append({"t": t, "n": n, **tally(found), "theory": t * t,
                     "images": images[:keep], "found": found[:keep]})
        if say:
            say(f"t={t:g}: {rows[-1]['finite']}/{n} finite samples, mean {rows[-1]['E']:.2f} "
                "squares")
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


def table1_csv(path, rows):
    header = ["t", "samples", "finite", "nonfinite"] + [f"count_{b}" for b in BUCKETS] + \
             [f"share_{b}_pct" for b in BUCKETS] + ["empirical_E", "theoretical_E"]
    body = [[r["t"], r["n"], r["finite"], r["nonfinite"], *r["counts"],
             *(f"{s:.2f}" for s in r["shares"]), f"{r['E']:.4f}", f"{r['theory']:.4f}"]
            for r in rows]
    return write_csv(path, header, body)


def table1_plot(rows):
    """Empirical E against t² (top), shares per bucket against t (bottom)."""
    from ..render.plot import Series, line_chart, stack

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


def table1_folder(checkpoint):
    """Where Table 1 goes when no folder is given: beside the run (`<run folder>/table1`), or
    `./table1` for a checkpoint file."""
    return os.path.join(checkpoint, "table1") if os.path.isdir(checkpoint) else "table1"


def write_table1(rows, out):
    """Table 1's CSV, its plot and the contact sheet (the first samples per t with the detected
    squares outlined) into folder `out`; returns the paths written."""
    from ..render.images import save_png
    from ..render.sheets import contact_sheet

    sheet, _ = contact_sheet([(r["images"], r["found"]) for r in rows],
                             [f"t={r['t']:g}" for r in rows])
    return [table1_csv(os.path.join(out, "table1.csv"), rows),
            save_png(table1_plot(rows), os.path.join(out, "table1.png")),
            save_png(sheet, os.path.join(out, "contact-sheet.png"))]
