"""Atomic file writes: a reader, or a run killed at any moment, sees the old file or the new one.

Every output goes to a temp file in the destination's folder, is flushed to disk, and is renamed
over the destination; a failed or interrupted write removes its temp file. A write the system
refuses (a full disk, no permission, a read-only folder) is a `WriteError`: a UserError that names
the file and the reason, so the command line says it in one line.
"""
import csv
import io
import json
import os
import tempfile

from .errors import UserError


class WriteError(UserError):
    """A file that could not be written; the file as it was before is untouched."""

    def __init__(self, path, err):
        self.path, self.reason = os.fspath(path), err.strerror or str(err)
        super().__init__(f"cannot write {self.path} ({self.reason}); free some space or fix the "
                         "folder's permissions, or write somewhere else (--out)")


def atomic_write(path, write, mode=0o644):
    """Call write(file) on a binary temp file beside `path`, fsync it, then rename it over
    `path`. An OSError on the way becomes a WriteError."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise WriteError(path, err) from None
        raise
    return path


def append_line(path, line):
    """Append one line, or nothing: a write cut short (a full disk) is truncated away, so a log
    never ends in half a line. An OSError becomes a WriteError."""
    try:
        with open(path, "ab") as f:
            start = f.tell()
            try:
                f.write(line.rstrip("\n").encode("utf-8") + b"\n")
                f.flush()
            except OSError:
                f.truncate(start)
                raise
    except OSError as err:
        raise WriteError(path, err) from None


def write_text(path, text):
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path, data):
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())
