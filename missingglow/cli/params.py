"""Numbers users type for the analysis commands: lists and ranges of alphas and temperatures,
counts, and a square given by hand. Anything out of range is a one-line UserError."""
import math

from ..errors import UserError


def parse_values(text, what):
    """'0.5', '0.1,0.2,0.3' or a range 'START:STOP:STEP' (STOP included) → list of floats."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3 or not all(math.isfinite(p) for p in parts) or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            if count < 1 or count > 10_000:
                raise ValueError
            return [round(start + i * step, 10) for i in range(count)]
        values = [float(p) for p in text.split(",") if p.strip()]
        if not values:
            raise ValueError
        return values
    except ValueError:
        raise UserError(f"{what} must be a number, a list like 0.1,0.5 or a range like 0.1:1.0:0.1 "
                        f"(start:stop:step), not {text!r}") from None


def parse_alphas(text):
    """Alphas in (0, 1]: a latent scaled by more than 1 or by 0 or less is no imputation."""
    values = parse_values(text, "alpha")
    for a in values:
        if not (math.isfinite(a) and 0 < a <= 1):
            raise UserError(f"alpha must lie in (0, 1] (1 gives the input back), not {a:g}")
    return values


def parse_temperatures(text):
    values = parse_values(text, "temperature")
    for t in values:
        if not (math.isfinite(t) and t >= 0):
            raise UserError(f"temperature must be a finite number of 0 or more, not {t:g}")
    return values


def check_positive(n, what):
    if n is None or n < 1:
        raise UserError(f"{what} must be at least 1, not {n}")
    return n


def parse_square(text):
    """'TOP,LEFT,SIZE' → (top, left, size)."""
    try:
        top, left, size = (int(p) for p in str(text).split(","))
    except ValueError:
        raise UserError(f"--square takes TOP,LEFT,SIZE in pixels (e.g. 10,20,12), "
                        f"not {text!r}") from None
    if top < 0 or left < 0 or size < 1:
        raise UserError(f"--square {text}: top and left must be 0 or more and size at least 1")
    return top, left, size
