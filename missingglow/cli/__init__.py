"""The `missingglow` command line: parse, call, print. No logic a test would want to call."""

import sys

import click

from ..errors import UserError
from . import analysis_commands as analysis
from . import train_commands as training


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Glow normalizing flows trained on images with missing squares."""


for command in (
    training.prepare,
    training.check,
    training.train,
    analysis.sample,
    analysis.squares,
    analysis.impute,
    analysis.latent_norms_command,
    analysis.evaluate,
):
    cli.add_command(command)


def main(argv=None):
    """Entry point: a UserError or a bad option becomes one `error:` line on stderr and exit code
    2 (click's usage block folded into that line), never a traceback."""
    try:
        cli.main(args=argv, prog_name="missingglow", standalone_mode=False)
    except UserError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.BadParameter as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(2)
    except click.UsageError as err:
        hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        click.echo(f"error: {err.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
