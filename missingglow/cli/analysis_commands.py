"""The analysis commands (`sample`, `squares`, `impute`, `latent-norms`, `evaluate`): parse, call,
print."""

import sys

import click

from ..analysis import conditional_table1 as conditional  # squares --posterior's defaults
from ..analysis.evaluate import SAMPLES, SAMPLING_DEFAULTS  # the samplers' defaults, for --help
from ..analysis.impute import SAMPLING
from ..errors import UserError
from ..progress import echo
from .params import ALPHAS, COUNT, SQUARE_PLACE, TEMPERATURES, FiniteRange


def _flat(lists):
    return [v for values in lists for v in values]


def _checkpoint(value):
    """--checkpoint as given, else the newest run under ./runs/ (said in one line)."""
    if value is not None:
        return value
    from ..analysis.runs import newest_run

    path = newest_run()
    echo(f"using the newest run, {path} (pass --checkpoint to choose another)")
    return path


def _wrote(paths, note=""):
    click.echo(f"wrote {', '.join(paths)}{note}")


CHECKPOINT_HELP = "Run folder or checkpoint file [the newest run under ./runs/]."


def dataset_options(f):
    """--data and --square: the held-out images of a checkpoint that carries no training config
    (one imported from rosinality/glow-pytorch). `evaluate` and `latent-norms`."""
    f = click.option(
        "--square",
        "square",
        type=COUNT,
        default=None,
        help="Imported checkpoints only: the grey squares' side K in pixels (a "
        "missingglow run uses its own).",
    )(f)
    return click.option(
        "--data",
        "data",
        default=None,
        help="Imported checkpoints only: the image folder (or .mgcache) whose "
        "held-out split to use [the synthetic faces].",
    )(f)


@click.command()
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
@click.option(
    "-t",
    "--temperature",
    "temperatures",
    type=TEMPERATURES,
    multiple=True,
    default=["0.7"],
    help="Temperature(s): 0.7, a list 0.5,0.7 or a range 0.1:1.5:0.1; repeatable. [0.7]",
)
@click.option(
    "-n",
    "n",
    type=COUNT,
    default=None,
    help="Samples per temperature [64 for one temperature, 8 for several].",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--columns", type=COUNT, default=None, help="Grid columns for one temperature [√n].")
@click.option("--out", default="samples.png", show_default=True, help="PNG file to write.")
def sample(checkpoint, temperatures, n, seed, columns, out):
    """Sample a grid PNG: ε ~ N(0, t²·I), x = Φ⁻¹(ε); several temperatures give a row each."""
    from ..analysis.runs import open_run, sample_sheet
    from ..render.images import save_png

    ts = _flat(temperatures)
    n = n or (64 if len(ts) == 1 else 8)
    run = open_run(_checkpoint(checkpoint))
    image, bad = sample_sheet(run, ts, n, seed, columns)
    save_png(image, out)
    for t, count in bad:
        if count:
            click.echo(
                f"t={t:g}: {count} of {n} samples non-finite (drawn as magenta/black checkerboards)"
            )
    total = sum(c for _, c in bad)
    click.echo(f"wrote {out}: {n * len(ts)} samples, {total} non-finite")


TABLE1_TEMPERATURES = "0.1:1.5:0.1"
POSTERIOR_TEMPERATURES = "0.3:1.0:0.1"  # squares --posterior's

# Said after counting squares of any size (no --square, no checkpoint to take it from).
SQUARE_HINT = (
    "giving --square K (the trained square size) counts more reliably; see docs/phenomenon.md"
)


def sampler_options(defaults, note="", only_with=None):
    """The posterior sampler's temperature and chain length (`impute` and `evaluate`, each with
    its own defaults); `note` ends the warm-up's help. With `only_with` (squares' --posterior)
    the chain lengths belong to that flag: they default to None, so that giving them without it
    can be refused, their help names it and the default, and there is no --temperature (the
    command's own -t gives the temperatures)."""

    def described(text, key):
        return f"{only_with}: {text} [{defaults[key]}]" if only_with else text

    def chain_option(flag, name, key, text):
        return click.option(
            flag,
            name,
            type=click.IntRange(min=0),
            default=None if only_with else defaults[key],
            show_default=not only_with,
            help=described(text, key),
        )

    options = [
        chain_option(
            "--posterior-warmup",
            "sampler_warmup",
            "warmup",
            f"MALA steps that adapt each chain's step size, not kept.{note}",
        ),
        chain_option(
            "--posterior-steps",
            "sampler_steps",
            "steps",
            "MALA steps at the adapted step size; a draw is each chain's last state.",
        ),
    ]
    if not only_with:
        options.insert(
            0,
            click.option(
                "--temperature",
                type=FiniteRange(min=0, min_open=True),
                default=defaults["temperature"],
                show_default=True,
                help="The posterior's prior temperature t: N(0, t²·I) on the latent.",
            ),
        )

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@click.command()
@click.argument("images", nargs=-1)
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    help="Run folder or checkpoint: sample it and print Table 1 [the newest run under "
    "./runs/ when no IMAGES are given]. With --posterior repeatable: a table and a curve "
    "per run.",
)
@click.option(
    "-t",
    "--temperature",
    "temperatures",
    type=TEMPERATURES,
    multiple=True,
    default=(),
    help="Temperatures (list or START:STOP:STEP); repeatable. "
    f"[{TABLE1_TEMPERATURES}; with --posterior {POSTERIOR_TEMPERATURES}]",
)
@click.option(
    "-n",
    "n",
    type=COUNT,
    default=50,
    show_default=True,
    help="Samples per temperature (the paper counted 50 by hand); with --posterior, the "
    "held-out images to complete.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--square",
    "square",
    type=COUNT,
    default=None,
    help="Square side to look for [the checkpoint's; for images without one: any 4…S/2].",
)
@click.option(
    "--size",
    "image_size",
    type=COUNT,
    default=None,
    help="Resize given images to this side [the checkpoint's, else each image's shorter side].",
)
@click.option(
    "--posterior",
    is_flag=True,
    help="Instead of sampling: complete the run's held-out images, their training squares "
    "the hole, by posterior draws at each t (and invert's MAP), and count the holes filled "
    "grey, by the detector and by the pixels (docs/detector.md).",
)
@click.option(
    "--samples",
    type=COUNT,
    default=None,
    help=f"--posterior: completions per image and temperature. [{conditional.SAMPLES}]",
)
@sampler_options(dict(warmup=conditional.WARMUP, steps=conditional.STEPS), only_with="--posterior")
@click.option(
    "--out",
    default=None,
    help="Output folder for Table 1 [<run folder>/table1 or ./table1; with --posterior "
    "./conditional-table1].",
)
def squares(
    images,
    checkpoints,
    temperatures,
    n,
    seed,
    square,
    image_size,
    posterior,
    samples,
    sampler_warmup,
    sampler_steps,
    out,
):
    """Count grey squares: in samples per temperature (the paper's Table 1), in IMAGES, or with
    --posterior in completions of held-out images."""
    from ..analysis.runs import open_run
    from ..analysis.table1 import (
        detector_recall,
        format_recall,
        format_table1,
        square_table,
        table1_folder,
        write_table1,
    )

    if posterior:
        if images or square is not None or image_size is not None:
            raise UserError(
                "--posterior completes the runs' own held-out images at their own square "
                "size: leave out IMAGES, --square and --size"
            )
        _conditional_table1(
            checkpoints, temperatures, n, seed, samples, sampler_warmup, sampler_steps, out
        )
        return
    sampler = {
        "--samples": samples,
        "--posterior-warmup": sampler_warmup,
        "--posterior-steps": sampler_steps,
    }
    given = [name for name, value in sampler.items() if value is not None]
    if given:
        raise UserError(f"{', '.join(given)} only go with --posterior")
    if len(checkpoints) > 1:
        raise UserError(
            "Table 1 samples one --checkpoint; several are for --posterior (a curve per run)"
        )
    checkpoint = checkpoints[0] if checkpoints else None
    if images:
        from ..analysis.square_counts import count_in_files, format_count

        k = square
        if checkpoint is not None:
            run = open_run(checkpoint, square)
            k, image_size = run.square, image_size or run.image_size
        counts = count_in_files(images, k, image_size)
        for count in counts:
            if count.error is None:
                click.echo(format_count(count))
            else:
                click.echo(f"error: {count.path}: {count.error}", err=True)
        if square is None and checkpoint is None and any(c.error is None for c in counts):
            echo(SQUARE_HINT)
        if any(c.error is not None for c in counts):
            sys.exit(2)
        return
    if checkpoint is None:
        try:
            checkpoint = _checkpoint(None)
        except UserError:
            raise UserError(
                "give image files to count squares in, or --checkpoint RUN (or train "
                "a run under ./runs/) to sample it and print Table 1"
            ) from None
    run = open_run(checkpoint, square)
    ts = _flat(temperatures or (TEMPERATURES.convert(TABLE1_TEMPERATURES, None, None),))
    rows = square_table(run, ts, n, seed, say=echo)
    click.echo(format_table1(rows))
    bad = sum(r["nonfinite"] for r in rows)
    if bad:
        click.echo(
            f"{bad} of {n * len(rows)} samples were non-finite (the flow's inverse "
            "overflowed); shares and E are over the finite ones"
        )
    echo("measuring the counter's recall on faint squares (synthetic faces at the run's size)")
    recall = detector_recall(run)
    click.echo(format_recall(recall))
    _wrote(
        write_table1(rows, out or table1_folder(checkpoint), recall),
        f" (contact sheet: the first {min(n, 16)} samples per t, detected squares outlined in red)",
    )


def _conditional_table1(checkpoints, temperatures, n, seed, samples, warmup, steps, out):
    """`squares --posterior`: every run checked before any work, one progress bar for all."""
    from ..analysis.runs import open_run
    from ..analysis.table1 import format_recall
    from ..progress import progress_bar

    ts = _flat(temperatures or (TEMPERATURES.convert(POSTERIOR_TEMPERATURES, None, None),))
    paths = list(checkpoints) or [_checkpoint(None)]
    plans = [
        conditional.plan_conditional(
            open_run(path),
            ts,
            n,
            samples or conditional.SAMPLES,
            conditional.WARMUP if warmup is None else warmup,
            conditional.STEPS if steps is None else steps,
            say=echo,
        )
        for path in paths
    ]
    tables = []
    with progress_bar(sum(p.total_steps for p in plans), "completing") as bar:
        for plan in plans:
            tick = (lambda: bar.update(1)) if bar is not None else None
            tables.append(conditional.conditional_table(plan, seed, on_step=tick))
    echo("measuring the counter's recall on faint squares (synthetic faces at each run's size)")
    recalls = conditional.detector_recalls([plan.run for plan in plans])
    for i, table in enumerate(tables):
        click.echo(conditional.format_conditional(table))
        if i == len(tables) - 1 or recalls[i] is not recalls[i + 1]:
            click.echo(format_recall(recalls[i]))
        click.echo("")
    click.echo("\n".join(conditional.RULE))
    _wrote(
        conditional.write_conditional(tables, out or "conditional-table1", recalls),
        f" (sheet: the first {conditional.EXAMPLES} inputs per run, their MAP and one "
        "completion per t, detected squares outlined in red)",
    )


def invert_options(f):
    """The latent-norm inversion's settings, shared by `impute` and `evaluate`."""
    from ..completion import invert as inv

    d = inv.DEFAULTS
    options = [
        click.option(
            "--gamma",
            type=FiniteRange(min=0),
            default=d["gamma"],
            show_default=True,
            help="Weight of ‖z‖²/D against the fit to the observed pixels; with "
            "--samples it also sets the posterior's noise, σ² = γ·M/D.",
        ),
        click.option(
            "--steps", type=COUNT, default=d["steps"], show_default=True, help="Optimiser steps."
        ),
        click.option(
            "--lr",
            type=FiniteRange(min=0, min_open=True),
            default=d["lr"],
            show_default=True,
            help="Optimiser step size.",
        ),
        click.option(
            "--optimiser",
            type=click.Choice(inv.OPTIMISERS),
            default=d["optimiser"],
            show_default=True,
        ),
        click.option(
            "--start",
            type=click.Choice(inv.STARTS),
            default=d["start"],
            show_default=True,
            help="Start from α·Φ of the input with its hole harmonically filled, or of "
            "the input as it is.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


NOISE_NEEDS_GAMMA = (
    "--samples needs --gamma above 0: it sets the posterior's observation noise (σ² = γ·M/D)"
)


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
@click.option(
    "--method",
    type=click.Choice(["invert", "alpha"]),
    default=None,
    help="invert: fit the observed pixels with a small latent (needs the hole); alpha: "
    "the paper's x' = Φ⁻¹(α·Φ(x)). [alpha when --alpha is given, else invert]",
)
@click.option(
    "--alpha",
    "alphas",
    type=ALPHAS,
    default=None,
    help="Scale(s) of the latent in (0, 1]: 0.6, a list 0.2,0.6,1.0 or a range "
    "0.1:1.0:0.1. Alone it asks for the paper's α-imputation (several: its Fig. 2 "
    "strips); with --method invert, one value, the start's scale. [0.6]",
)
@click.option(
    "--mask",
    "masks",
    multiple=True,
    help="Mask image (non-zero = missing), one per image file in order, or one for "
    "all; repeatable. Else: an image's alpha channel (one opaque everywhere marks "
    "nothing), the dataset's squares for heldout:N, or the detector.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="invert: completions per image drawn from the posterior given the observed "
    "pixels (MALA, started at the restored image), written beside it with their "
    "per-pixel spread.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the posterior draws.")
@click.option(
    "--keep-observed",
    is_flag=True,
    help="alpha: restore only the hole; keep every other pixel of the input.",
)
@click.option(
    "--iterations",
    type=COUNT,
    default=1,
    show_default=True,
    help="alpha: repeat 'scale the latent, put the observed pixels back' N times "
    "(more than 1 implies --keep-observed).",
)
@click.option(
    "--square",
    "square",
    type=SQUARE_PLACE,
    default=None,
    help="The square's place by hand, for every input (else: the mask, the alpha "
    "channel, the dataset's for heldout:N, else the detector's).",
)
@invert_options
@sampler_options(SAMPLING)
@click.option("--out", default="imputed", show_default=True, help="Output folder.")
def impute(
    images,
    checkpoint,
    method,
    alphas,
    masks,
    samples,
    seed,
    keep_observed,
    iterations,
    square,
    gamma,
    steps,
    lr,
    optimiser,
    start,
    temperature,
    sampler_warmup,
    sampler_steps,
    out,
):
    """Restore IMAGES (files, or heldout:N for held-out dataset items).

    `impute img.png` restores by latent-norm inversion; `impute --alpha 0.6 img.png` by the
    paper's α-imputation, and `--alpha 0.2,0.6,1.0` draws its Fig. 2 strips. An input that cannot
    be used gets its own `error:` line and the exit code 2; the others are still restored."""
    from ..analysis.impute import plan_impute, prepare_inputs, restore_inputs
    from ..analysis.runs import open_run
    from ..progress import progress_bar

    plan = plan_impute(
        method,
        alphas,
        masks=masks,
        square=square,
        samples=samples,
        keep_observed=keep_observed,
        iterations=iterations,
    )
    if plan.samples and gamma <= 0:
        raise UserError(NOISE_NEEDS_GAMMA)
    run = open_run(_checkpoint(checkpoint))
    items, failures = prepare_inputs(run, images, plan, say=echo)
    for spec, why in failures:
        click.echo(f"error: {spec}: {why}", err=True)
    if items:
        options = dict(gamma=gamma, steps=steps, lr=lr, optimiser=optimiser, start=start)
        sampling = dict(temperature=temperature, warmup=sampler_warmup, steps=sampler_steps)
        total = steps + (sampler_warmup + sampler_steps if plan.samples else 0)
        with progress_bar(total, "inverting", show=plan.method == "invert") as bar:
            done = restore_inputs(
                run,
                items,
                plan,
                out,
                seed,
                options,
                on_step=(lambda i: bar.update(1)) if bar is not None else None,
                sampling=sampling,
            )
        for line in done.lines:
            click.echo(line)
        bad = f" ({done.nonfinite} non-finite)" if done.nonfinite else ""
        click.echo(f"wrote {done.count} restored image(s) to {out}{bad}")
    if failures:
        sys.exit(2)


@click.command("latent-norms")
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
@click.option(
    "-n", "n", type=COUNT, default=100, show_default=True, help="Held-out images per variant."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds the dequantisation noise."
)
@dataset_options
@click.option("--out", default="latent-norms", show_default=True, help="Output folder.")
def latent_norms_command(checkpoint, n, seed, data, square, out):
    """Histograms of ‖Φ(x)‖ for several square sizes and counts (the paper's Appendix B)."""
    from ..analysis.latent_norms import format_table, latent_norms, write_latent_norms
    from ..analysis.runs import open_run

    run = open_run(_checkpoint(checkpoint)).with_dataset(data, square)
    result = latent_norms(run, n, seed)
    click.echo(format_table(result))
    _wrote(write_latent_norms(result, out))


def _families(ctx, param, value):
    """--masks: comma-separated hole family names, each once."""
    from ..data.mask_families import FAMILIES

    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    wrong = [n for n in names if n not in FAMILIES]
    if wrong or not names or len(set(names)) != len(names):
        what = f"unknown {', '.join(repr(w) for w in wrong)}" if wrong else "each name once"
        raise click.BadParameter(f"takes mask families from {','.join(FAMILIES)} ({what})")
    return tuple(names)


@click.command()
@click.option("--checkpoint", default=None, help=CHECKPOINT_HELP)
@click.option("-n", "n", type=COUNT, default=100, show_default=True, help="Held-out images.")
@click.option(
    "--alpha",
    "alphas",
    type=ALPHAS,
    default="0.1:1.0:0.1",
    show_default=True,
    help="Alphas to score.",
)
@click.option(
    "--iterations",
    type=COUNT,
    default=3,
    show_default=True,
    help="Also score keep-observed repeated N times (1: skip).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seeds the dequantisation noise, the holes of every family but square, and "
    "the posterior draws.",
)
@click.option(
    "--masks",
    default="square,centre,rectangles,pixels",
    show_default=True,
    callback=_families,
    help="Hole families to score every method on, the same images for each: square "
    "(the training square), centre (a centred S/2 square), rectangles (10–40 % "
    "of the image), pixels (half the pixels at random).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=SAMPLES,
    show_default=True,
    help="Posterior draws per image, scored as a sampler (0: skip the posterior). 19 "
    "is the fewest whose central 50 % and 90 % intervals sit on whole ranks.",
)
@click.option(
    "--classical/--no-classical",
    default=True,
    show_default=True,
    help="Also score scikit-image's and OpenCV's inpainting, where installed.",
)
@invert_options
@sampler_options(
    SAMPLING_DEFAULTS,
    note=" With --posterior-steps sized for -n 100 on four "
    "families in about a quarter of an hour of one CPU "
    "thread; longer chains cover closer to nominal "
    "(docs/imputation.md).",
)
@dataset_options
@click.option("--json", "json_path", default=None, help="Also write every row to this JSON file.")
@click.option("--out", default="evaluation", show_default=True, help="Output folder.")
def evaluate(
    checkpoint,
    n,
    alphas,
    iterations,
    seed,
    masks,
    samples,
    classical,
    gamma,
    steps,
    lr,
    optimiser,
    start,
    temperature,
    sampler_warmup,
    sampler_steps,
    data,
    square,
    json_path,
    out,
):
    """Every imputation method on the same held-out images and hole families (RMSE, PSNR, SSIM,
    seconds; the posterior's coverage and CRPS), and bits/dim."""
    from ..analysis.evaluate import evaluate as run_evaluation
    from ..analysis.evaluate import format_report, write_report
    from ..analysis.runs import open_run
    from ..progress import progress_bar

    if samples and gamma <= 0:
        raise UserError(NOISE_NEEDS_GAMMA)
    run = open_run(_checkpoint(checkpoint)).with_dataset(data, square)  # before the bar starts
    options = dict(gamma=gamma, steps=steps, lr=lr, optimiser=optimiser, start=start)
    sampling = dict(temperature=temperature, warmup=sampler_warmup, steps=sampler_steps)
    with progress_bar(n * len(masks), "evaluating") as bar:
        result = run_evaluation(
            run,
            n,
            alphas,
            iterations,
            seed,
            invert_options=options,
            classical=classical,
            masks=masks,
            samples=samples,
            posterior_options=sampling,
            on_batch=(lambda k: bar.update(k)) if bar is not None else None,
        )
    for name, why in result["skipped"].items():
        echo(f"skipped {name}: not installed ({why})")
    click.echo(format_report(result))
    _wrote(write_report(result, out, json_path))
