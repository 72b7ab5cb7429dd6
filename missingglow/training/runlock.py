"""One writer per run folder: `train` holds an OS lock on `<run>/.lock` for its whole life.

The lock is fcntl's advisory lock on an open file, so the operating system drops it the moment the
holder exits, however it exits (SIGKILL included): a lock left by a killed process never blocks a
resume. The holder's pid is written into the file so a second writer can say who holds it.
"""

import fcntl
import os

from ..atomic import WriteError
from ..errors import UserError

LOCK = ".lock"


class RunLock:
    """Context manager: acquire the run folder's lock or raise a UserError naming the holder."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK)
        self.file = None

    def __enter__(self):
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self.file = open(self.path, "a+")
        except OSError as err:
            raise WriteError(self.path, err) from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(
                f"{os.path.dirname(self.path)} is being trained by process {holder}; "
                "wait for it to finish (or stop it), then --resume it"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        return False
