"""The `missingglow` command line: parse, call, print. No logic a test would want to call."""
import sys

import click

from .errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Glow normalizing flows trained on images with missing squares."""


@cli.command()
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="Image folder (searched recursively). Default: the built-in synthetic faces.")
@click.option("--size", type=int, default=64, show_default=True, help="Image side S in pixels.")
@click.option("--cache", "cache_dir", type=click.Path(), default=None,
              help="Cache folder. Default: $MISSINGGLOW_CACHE or ~/.cache/missingglow.")
@click.option("--workers", type=int, default=None, help="Decoding processes. Default: all cores.")
@click.option("--synthetic-count", type=int, default=10_000, show_default=True,
              help="How many synthetic faces, when no --data is given.")
@click.option("--synthetic-seed", type=int, default=0, show_default=True)
@click.option("--rebuild", is_flag=True, help="Decode again even if a good cache exists.")
def prepare(data_dir, size, cache_dir, workers, synthetic_count, synthetic_seed, rebuild):
    """Decode an image folder once into the memory-mapped cache (reused when up to date)."""
    from .data import open_dataset

    cache = open_dataset(data_dir, size, cache_dir=cache_dir, workers=workers, rebuild=rebuild,
                         synthetic_count=synthetic_count, synthetic_seed=synthetic_seed)
    click.echo(cache.path)


@cli.command()
def check():
    """Check this installation: the fused extension, and a small model that must invert."""
    from .selfcheck import run

    for line in run():
        click.echo(line)
    click.echo("ok")


def main(argv=None):
    """Entry point: a UserError becomes one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="missingglow", standalone_mode=False)
    except UserError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
