"""The `missingglow` command line: parse, call, print. No logic a test would want to call."""
import sys

import click

from .errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Glow normalizing flows trained on images with missing squares."""


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
