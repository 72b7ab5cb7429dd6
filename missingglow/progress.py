"""What long work shows a person: one-line messages and progress bars on stderr.

The one place below the command line that knows about click, so the library's layers can report
progress without depending on the CLI.
"""

import contextlib
import sys

import click


def echo(message):
    click.echo(message, err=True)


def progress_bar(length, label, show=True, start=0, show_pos=False, item_show_func=None):
    """click's progress bar on stderr, or a stand-in (None) when `show` is false."""
    if not show:
        return contextlib.nullcontext(None)
    bar = click.progressbar(
        length=length,
        label=label,
        file=sys.stderr,
        show_pos=show_pos,
        item_show_func=item_show_func,
    )
    bar.pos = start
    return bar
