"""What users type into the analysis commands, as click parameter types: lists and ranges of
alphas and temperatures, counts, finite numbers in a range, and a square's place given by hand.

A bad value is click's `BadParameter`; `missingglow.cli.main` turns it into the one `error:` line
every other bad input gets, instead of click's usage block.
"""

import math

import click

COUNT = click.IntRange(min=1)
MOST_VALUES = 10_000


def parse_values(text):
    """'0.5', '0.1,0.2,0.3' or a range 'START:STOP:STEP' (STOP included) → list of floats; None
    when the text is none of those."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3 or not all(math.isfinite(p) for p in parts) or parts[2] <= 0:
                return None
            start, stop, step = parts
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count < 1 or count > MOST_VALUES:
                return None
            return [round(start + i * step, 10) for i in range(count)]
        values = [float(p) for p in text.split(",") if p.strip()]
        return values or None
    except ValueError:
        return None


class Values(click.ParamType):
    """A number, a list like 0.1,0.5 or a range like 0.1:1.0:0.1 → a list of floats, each finite
    and `allowed`; `rule` says what is allowed, for the message."""

    def __init__(self, what, allowed, rule):
        self.what, self.allowed, self.rule = what, allowed, rule
        self.name = f"{what}s"

    def convert(self, value, param, ctx):
        values = list(value) if isinstance(value, (list, tuple)) else parse_values(value)
        if values is None:
            self.fail(
                f"{self.what} must be a number, a list like 0.1,0.5 or a range like "
                f"0.1:1.0:0.1 (start:stop:step), not {str(value).strip()!r}",
                param,
                ctx,
            )
        for v in values:
            if not (math.isfinite(v) and self.allowed(v)):
                self.fail(f"{self.what} {self.rule}, not {v:g}", param, ctx)
        return values


# a latent scaled by more than 1, or by 0 or less, is no imputation
ALPHAS = Values("alpha", lambda a: 0 < a <= 1, "must lie in (0, 1] (1 gives the input back)")
TEMPERATURES = Values("temperature", lambda t: t >= 0, "must be a finite number of 0 or more")


class FiniteRange(click.FloatRange):
    """click's FloatRange, without NaN and infinity (which every comparison lets through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


class SquarePlace(click.ParamType):
    """'TOP,LEFT,SIZE' in pixels → (top, left, size)."""

    name = "top,left,size"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            top, left, size = (int(p) for p in str(value).split(","))
        except ValueError:
            self.fail(f"give TOP,LEFT,SIZE in pixels (e.g. 10,20,12), not {value!r}", param, ctx)
        if top < 0 or left < 0 or size < 1:
            self.fail(f"{value}: top and left must be 0 or more and size at least 1", param, ctx)
        return top, left, size


SQUARE_PLACE = SquarePlace()
