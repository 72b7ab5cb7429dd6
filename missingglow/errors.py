"""One exception type for problems a user can fix.

The CLI prints such an error as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input, stated as what is wrong and what to do about it."""
