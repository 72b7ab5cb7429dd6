"""The analysis commands (`sample`, `squares`, `impute`, `latent-norms`, `evaluate`): parse, call,
print."""
import click

from ..errors import UserError
from ..progress import echo


def _temperatures(values, default):
    from .params import parse_temperatures

    out = []
    for text in values or (default,):
        out += parse_temperatures(text)
    return out


def _checkpoint(value):
    """--checkpoint as given, else the newest run under ./runs/ (said in one line)."""
    if value is not None:
        return value
    from ..analysis.runs import newest_run

    path = newest_run()
    echo(f"using the newest run, {path} (pass --checkpoint to choose another)")
    return path


CHECKPOINT_HELP = "Run folder or checkpoint file [the newest run under ./runs/]."


def dataset_options(f):
    """--data and --square: the held-out images of a checkpoint that carries no training config
    (one imported from rosinality/glow-pytorch). `evaluate` and `latent-norms`."""
    f = click.option("--square", "square", type=int, default=None,
                     help="Imported checkpoints only: the grey squares' side K in pixels (a "
                          "missingglow run uses its own).")(f)
    return click.option("--data", "data", default=None,
                        help="Imported checkpoints only: the image folder (or .mgcache) whose "
                             "held-out split to use [the synthetic faces].")(f)


@click.command()
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
@click.option("-t", "--temperature", "temperatures", multiple=True,
              help="Temperature(s): 0.7, a list 0.5,0.7 or a range 0.1:1.5:0.1; repeatable. [0.7]")
@click.option("-n", "n", type=int, default=None,
              help="Samples per temperature [64 for one temperature, 8 for several].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--columns", type=int, default=None, help="Grid columns for one temperature [√n].")
@click.option("--out", default="samples.png", show_default=True, help="PNG file to write.")
def sample(checkpoint, temperatures, n, seed, columns, out):
    """Sample a grid PNG: ε ~ N(0, t²·I), x = Φ⁻¹(ε); several temperatures give a row each."""
    from ..analysis.runs import open_run, sample_sheet
    from ..render.images import save_png
    from .params import check_positive

    ts = _temperatures(temperatures, "0.7")
    n = check_positive(n if n is not None else (64 if len(ts) == 1 else 8), "-n (samples)")
    if columns is not None:
        check_positive(columns, "--columns")
    run = open_run(_checkpoint(checkpoint))
    image, bad = sample_sheet(run, ts, n, seed, columns)
    save_png(image, out)
    for t, count in bad:
        if count:
            click.echo(f"t={t:g}: {count} of {n} samples non-finite (drawn as magenta/black "
                       "checkerboards)")
    total = sum(c for _, c in bad)
    click.echo(f"wrote {out}: {n * len(ts)} samples, {total} non-finite")


# Said after counting squares of any size (no --square, no checkpoint to take it from).
SQUARE_HINT = ("giving --square K (the trained square size) counts more reliably; see "
               "docs/phenomenon.md")


@click.command()
@click.argument("images", nargs=-1)
@click.option("--checkpoint", default=None,
              help="Run folder or checkpoint: sample it and print Table 1 [the newest run under "
                   "./runs/ when no IMAGES are given].")
@click.option("-t", "--temperature", "temperatures", multiple=True,
              help="Temperatures (list or START:STOP:STEP); repeatable. [0.1:1.5:0.1]")
@click.option("-n", "n", type=int, default=50, show_default=True,
              help="Samples per temperature (the paper counted 50 by hand).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--square", "square", type=int, default=None,
              help="Square side to look for [the checkpoint's; for images without one: any 4…S/2].")
@click.option("--size", "image_size", type=int, default=None,
              help="Resize given images to this side [the checkpoint's, else each image's "
                   "shorter side].")
@click.option("--out", default=None,
              help="Output folder for Table 1 [<run folder>/table1 or ./table1].")
def squares(images, checkpoint, temperatures, n, seed, square, image_size, out):
    """Count grey squares: in samples per temperature (the paper's Table 1), or in IMAGES."""
    import os

    from ..analysis.runs import open_run
    from ..analysis.table1 import format_table1, square_table, table1_csv, table1_plot
    from ..render.images import save_png
    from ..render.sheets import contact_sheet
    from .params import check_positive

    if square is not None:
        check_positive(square, "--square")
    if image_size is not None:
        check_positive(image_size, "--size")
    if images:
        from PIL import Image

        from ..analysis.squares import detect, detector_sizes_for
        from ..data.images import load_image

        k = square
        if checkpoint is not None:
            run = open_run(checkpoint, square)
            k, image_size = run.square, image_size or run.image_size
        for path in images:
            size = image_size
            if size is None:
                if not os.path.isfile(path):
                    raise UserError(f"image {path} not found")
                try:
                    with Image.open(path) as img:
                        size = min(img.size)
                except Exception:
                    raise UserError(f"cannot read {path} as an image; pass a PNG, JPEG, BMP or "
                                    "WebP file") from None
            found = detect(load_image(path, size), detector_sizes_for(k, size))
            where = ", ".join(f"({s.top},{s.left},{s.size})" for s in found)
            click.echo(f"{path}: {len(found)} square{'s' if len(found) != 1 else ''}"
                       f"{' at (top,left,size) ' + where if found else ''}")
        if square is None and checkpoint is None:
            echo(SQUARE_HINT)
        return
    if checkpoint is None:
        try:
            checkpoint = _checkpoint(None)
        except UserError:
            raise UserError("give image files to count squares in, or --checkpoint RUN (or train "
                            "a run under ./runs/) to sample it and print Table 1") from None
    ts = _temperatures(temperatures, "0.1:1.5:0.1")
    check_positive(n, "-n (samples per temperature)")
    run = open_run(checkpoint, square)
    if out is None:
        out = os.path.join(checkpoint, "table1") if os.path.isdir(checkpoint) else "table1"
    os.makedirs(out, exist_ok=True)
    rows = square_table(run, ts, n, seed, say=echo)
    click.echo(format_table1(rows))
    bad = sum(r["nonfinite"] for r in rows)
    if bad:
        click.echo(f"{bad} of {n * len(rows)} samples were non-finite (the flow's inverse "
                   "overflowed); shares and E are over the finite ones")
    table1_csv(os.path.join(out, "table1.csv"), rows)
    save_png(table1_plot(rows), os.path.join(out, "table1.png"))
    sheet, _ = contact_sheet([(r["images"], r["found"]) for r in rows],
                             [f"t={r['t']:g}" for r in rows])
    save_png(sheet, os.path.join(out, "contact-sheet.png"))
    click.echo(f"wrote {out}/table1.csv, table1.png and contact-sheet.png (first "
               f"{min(n, 16)} samples per t, detected squares outlined in red)")


def invert_options(f):
    """The latent-norm inversion's settings, shared by `impute` and `evaluate`."""
    from ..analysis import invert as inv

    d = inv.DEFAULTS
    options = [
        click.option("--gamma", type=float, default=d["gamma"], show_default=True,
                     help="Weight of ‖z‖²/D against the fit to the observed pixels."),
        click.option("--steps", type=int, default=d["steps"], show_default=True,
                     help="Optimiser steps."),
        click.option("--lr", type=float, default=d["lr"], show_default=True,
                     help="Optimiser step size."),
        click.option("--optimiser", type=click.Choice(inv.OPTIMISERS), default=d["optimiser"],
                     show_default=True),
        click.option("--start", type=click.Choice(inv.STARTS), default=d["start"],
                     show_default=True,
                     help="Start from α·Φ of the input with its hole harmonically filled, or of "
                          "the input as it is."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _check_invert(gamma, steps, lr):
    import math

    from .params import check_positive

    check_positive(steps, "--steps")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise UserError(f"--gamma must be a finite number of 0 or more, not {gamma:g}")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be a positive number, not {lr:g}")


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
@click.option("--method", type=click.Choice(["invert", "alpha"]), default="invert",
              show_default=True,
              help="invert: fit the observed pixels with a small latent (needs the hole); alpha: "
                   "the paper's x' = Φ⁻¹(α·Φ(x)).")
@click.option("--alpha", "alpha", default=None,
              help="Scale(s) of the latent in (0, 1]: 0.6, a list 0.1,0.2 or a range 0.1:1.0:0.1 "
                   "[alpha: 0.6; invert: the start's scale, one value, 0.6].")
@click.option("--mask", "masks", multiple=True,
              help="Mask image (non-zero = missing), one per image file in order, or one for "
                   "all; repeatable. Else: an image's alpha channel, the dataset's squares for "
                   "heldout:N, --square, or the detector.")
@click.option("--samples", type=int, default=1, show_default=True,
              help="invert: completions per image (perturbed starts), drawn side by side with "
                   "their per-pixel spread.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the samples' starts.")
@click.option("--keep-observed", is_flag=True,
              help="alpha: restore only the hole; keep every other pixel of the input.")
@click.option("--iterations", type=int, default=1, show_default=True,
              help="alpha: repeat 'scale the latent, put the observed pixels back' N times "
                   "(more than 1 implies --keep-observed).")
@click.option("--square", "square", default=None,
              help="The square's place TOP,LEFT,SIZE by hand (else: the mask, the dataset's for "
                   "heldout:N, else the detector's).")
@invert_options
@click.option("--out", default="imputed", show_default=True, help="Output folder.")
def impute(images, checkpoint, method, alpha, masks, samples, seed, keep_observed, iterations,
           square, gamma, steps, lr, optimiser, start, out):
    """Restore IMAGES (files, or heldout:N for held-out dataset items)."""
    import os

    from ..analysis.impute import find_square, impute_files, invert_files, load_inputs
    from ..analysis.runs import open_run
    from ..progress import progress_bar
    from .params import check_positive, parse_alphas, parse_square

    alphas = parse_alphas(alpha or "0.6")
    check_positive(iterations, "--iterations")
    check_positive(samples, "--samples")
    by_hand = parse_square(square) if square is not None else None
    if method == "invert":
        _check_invert(gamma, steps, lr)
        if len(alphas) > 1:
            raise UserError("--method invert takes one --alpha (the start's scale); for strips "
                            "over several alphas add --method alpha")
    if samples > 1 and method != "invert":
        raise UserError("--samples draws several completions with --method invert")
    keep = method == "invert" or keep_observed or iterations > 1
    if by_hand and not keep:
        raise UserError("--square gives the square's place for --keep-observed; add "
                        "--keep-observed")
    run = open_run(_checkpoint(checkpoint))
    items = load_inputs(run, images, masks, say=echo)
    if keep:
        items = [find_square(run, item, by_hand) for item in items]
    os.makedirs(out, exist_ok=True)
    if method == "invert":
        with progress_bar(steps, "inverting") as bar:
            lines, bad = invert_files(
                run, items, out, samples, seed, alpha=alphas[0], gamma=gamma, steps=steps, lr=lr,
                optimiser=optimiser, start=start,
                on_step=(lambda i: bar.update(1)) if bar is not None else None)
        count = len(items) * samples
    else:
        lines, bad = impute_files(run, items, alphas, out, keep, iterations)
        count = len(items) * len(alphas)
    for line in lines:
        click.echo(line)
    click.echo(f"wrote {count} restored image(s) to {out}{f' ({bad} non-finite)' if bad else ''}")


@click.command("latent-norms")
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
@click.option("-n", "n", type=int, default=100, show_default=True,
              help="Held-out images per variant.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the dequantisation noise.")
@dataset_options
@click.option("--out", default="latent-norms", show_default=True, help="Output folder.")
def latent_norms_command(checkpoint, n, seed, data, square, out):
    """Histograms of ‖Φ(x)‖ for several square sizes and counts (the paper's Appendix B)."""
    import os

    from ..analysis.latent_norms import format_table, latent_norms, norms_csv, norms_plot
    from ..analysis.runs import open_run
    from ..render.images import save_png
    from .params import check_positive

    check_positive(n, "-n (images)")
    run = open_run(_checkpoint(checkpoint)).with_dataset(data, square)
    result = latent_norms(run, n, seed)
    click.echo(format_table(result))
    os.makedirs(out, exist_ok=True)
    norms_csv(os.path.join(out, "latent-norms.csv"), result)
    save_png(norms_plot(result), os.path.join(out, "latent-norms.png"))
    click.echo(f"wrote {out}/latent-norms.csv and latent-norms.png")


@click.command()
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
@click.option("-n", "n", type=int, default=100, show_default=True, help="Held-out images.")
@click.option("--alpha", "alpha", default="0.1:1.0:0.1", show_default=True, help="Alphas to score.")
@click.option("--iterations", type=int, default=3, show_default=True,
              help="Also score keep-observed repeated N times (1: skip).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the dequantisation noise.")
@click.option("--classical/--no-classical", default=True, show_default=True,
              help="Also score scikit-image's and OpenCV's inpainting, where installed.")
@invert_options
@dataset_options
@click.option("--json", "json_path", default=None, help="Also write every row to this JSON file.")
@click.option("--out", default="evaluation", show_default=True, help="Output folder.")
def evaluate(checkpoint, n, alpha, iterations, seed, classical, gamma, steps, lr, optimiser, start,
             data, square, json_path, out):
    """Every imputation method on the same held-out images (RMSE, PSNR, seconds), and bits/dim."""
    import os

    from ..analysis.evaluate import (
        comparison_sheet,
        format_report,
        report_csv,
        report_json,
        report_plot,
    )
    from ..analysis.evaluate import evaluate as run_evaluation
    from ..analysis.runs import open_run
    from ..progress import progress_bar
    from ..render.images import save_png
    from .params import check_positive, parse_alphas

    alphas = parse_alphas(alpha)
    check_positive(n, "-n (images)")
    check_positive(iterations, "--iterations")
    _check_invert(gamma, steps, lr)
    run = open_run(_checkpoint(checkpoint)).with_dataset(data, square)  # before the bar starts
    options = dict(gamma=gamma, steps=steps, lr=lr, optimiser=optimiser, start=start)
    with progress_bar(n, "evaluating") as bar:
        result = run_evaluation(run, n, alphas, iterations, seed, invert_options=options,
                                classical=classical,
                                on_batch=(lambda k: bar.update(k)) if bar is not None else None)
    for name, why in result["skipped"].items():
        echo(f"skipped {name}: not installed ({why})")
    click.echo(format_report(result))
    os.makedirs(out, exist_ok=True)
    report_csv(os.path.join(out, "evaluation.csv"), result)
    save_png(report_plot(result), os.path.join(out, "evaluation.png"))
    save_png(comparison_sheet(result), os.path.join(out, "comparison.png"))
    written = f"{out}/evaluation.csv, evaluation.png and comparison.png"
    if json_path:
        report_json(json_path, result)
        written += f", {json_path}"
    click.echo(f"wrote {written}")
