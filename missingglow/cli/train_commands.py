"""`prepare`, `check` and `train`: parse, call, print."""

import sys
from dataclasses import fields

import click

from ..errors import UserError
from ..training.config import TrainConfig, preset_values, resolve_config, value_type


@click.command()
@click.option(
    "--data",
    "data_dir",
    type=click.Path(),
    default=None,
    help="Image folder (searched recursively). Default: the built-in synthetic faces.",
)
@click.option("--size", type=int, default=64, show_default=True, help="Image side S in pixels.")
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(),
    default=None,
    help="Cache folder. Default: $MISSINGGLOW_CACHE or ~/.cache/missingglow.",
)
@click.option("--workers", type=int, default=None, help="Decoding processes. Default: all cores.")
@click.option(
    "--synthetic-count",
    type=int,
    default=10_000,
    show_default=True,
    help="How many synthetic faces, when no --data is given.",
)
@click.option("--synthetic-seed", type=int, default=0, show_default=True)
@click.option(
    "--synthetic-detail",
    type=click.Choice(["full", "low"]),
    default="full",
    show_default=True,
    help="Synthetic faces as drawn, or drawn at half size and enlarged (the small preset's).",
)
@click.option("--rebuild", is_flag=True, help="Decode again even if a good cache exists.")
def prepare(
    data_dir, size, cache_dir, workers, synthetic_count, synthetic_seed, synthetic_detail, rebuild
):
    """Decode an image folder once into the memory-mapped cache (reused when up to date)."""
    from ..data.cache import open_dataset

    cache = open_dataset(
        data_dir,
        size,
        cache_dir=cache_dir,
        workers=workers,
        rebuild=rebuild,
        synthetic_count=synthetic_count,
        synthetic_seed=synthetic_seed,
        synthetic_detail=synthetic_detail,
    )
    click.echo(cache.path)


@click.command()
def check():
    """Check this installation: the fused extension, and a small model that must invert."""
    from ..selfcheck import run

    for line in run():
        click.echo(line)
    click.echo("ok")


def shown_default(f):
    """The default of setting f as `train --help` shows it: one value, or each preset's."""
    shown = f.metadata["shown"]
    if shown is not None:
        return shown
    values = {name: spelled(f, value) for name, value in preset_values(f.name).items()}
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return ", ".join(f"{name}: {value}" for name, value in values.items())


def spelled(f, value):
    """A setting's value as a user would type it: the switch's name for a bool, %g for a float."""
    flag = f.metadata["flag"]
    if isinstance(value, bool):
        if flag and "/" in flag:
            return flag.split("/")[0 if value else 1].lstrip("-")
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def click_type(f):
    """The click type that checks a setting's range, so that a bad value is a usage error."""
    meta, kind = f.metadata, value_type(f)
    if meta["choices"] is not None:
        return click.Choice(meta["choices"])
    if kind is int and (meta["at_least"] is not None or meta["at_most"] is not None):
        return click.IntRange(min=meta["at_least"], max=meta["at_most"])
    if kind is float and meta["above"] is not None:
        return click.FloatRange(min=meta["above"], min_open=True, max=meta["at_most"])
    if kind is float and (meta["at_least"] is not None or meta["at_most"] is not None):
        return click.FloatRange(min=meta["at_least"], max=meta["at_most"])
    return kind


def flag_of(f):
    """--field-name, or the field's own spelling (--size, --affine/--additive)."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def setting_option(f):
    """The click option of TrainConfig field f, with help and default from the field; not given
    means None, which the preset fills."""
    flag = flag_of(f)
    help_text = f"{f.metadata['help']} [{shown_default(f)}]"
    if value_type(f) is bool and "/" in flag:
        return click.option(flag, f.name, default=None, help=help_text)
    if value_type(f) is bool:
        return click.option(flag, f.name, is_flag=True, default=None, help=help_text)
    return click.option(flag, f.name, type=click_type(f), default=None, help=help_text)


def setting_options(command):
    """Every TrainConfig field as an option of `command`, in the fields' order."""
    for f in reversed(fields(TrainConfig)):
        command = setting_option(f)(command)
    return command


def refuse_settings_beside_resume(settings):
    """A resumed run keeps its stored settings: one given beside --resume would be ignored, so it
    is refused instead (all but --iterations, which extends the run, and the settings of how this
    machine trains, which replace the stored ones)."""
    ignored = [
        flag_of(f)
        for f in fields(TrainConfig)
        if settings[f.name] is not None and f.name != "iterations" and not f.metadata["machine"]
    ]
    if ignored:
        machine = ", ".join(
            flag_of(f).split("/")[0] for f in fields(TrainConfig) if f.metadata["machine"]
        )
        raise UserError(
            f"--resume continues a run with its stored settings: of the others, only "
            f"--iterations applies, not {', '.join(ignored)} (this machine's "
            f"{machine} may be given too)"
        )


@click.command()
@setting_options
@click.option(
    "--resume",
    default=None,
    help="Continue the run in this folder (or from this checkpoint file) with its "
    "stored settings; of the options above only --iterations and this machine's "
    "--graph, --threads and --eval-batch apply.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(resume, quiet, **settings):
    """Train a Glow on images with grey squares (progress, checkpoints, resume, torchrun)."""
    from ..training.loop import train as run_training

    config, machine = None, None
    if resume is not None:
        refuse_settings_beside_resume(settings)
        machine = {k: settings[k] for k in TrainConfig.machine_names() if settings[k] is not None}
    else:
        config, note = resolve_config(settings)
        if note:
            click.echo(note, err=True)
    try:
        run_dir = run_training(
            config,
            resume=resume,
            iterations=settings["iterations"],
            progress=not quiet,
            machine=machine,
        )
    except KeyboardInterrupt:
        sys.exit(130)
    click.echo(run_dir)
