"""Atomic file writes: a reader, or a run killed at any moment, sees the old file or the new one.

Every output goes to a temp file in the destination's folder, is flushed to disk, and is renamed
over the destination; a failed or interrupted write removes its temp file.
"""
import csv
import io
import json
import os
import tempfile


def atomic_write(path, write, mode=0o644):
    """Call write(file) on a binary temp file beside `path`, fsync it, then rename it over
    `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


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
