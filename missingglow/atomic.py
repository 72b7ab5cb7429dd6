"""Atomic file writes: a reader, or a run killed at any moment, sees the old file or the new one.

Every output goes to a temp file in the destination's folder, is flushed to disk, and is renamed
over the destination; a failed or interrupted write removes its temp file. A write the system
refuses (a full disk, no permission, a read-only folder) is a `WriteError`: a UserError that names
the file and the reason, so the command line says it in one line.

A process killed mid-write cannot remove its temp file, so the writer holds an exclusive flock on
it from before it writes a byte until after the rename: `remove_abandoned_temp_files` removes only
temp files it can lock, whose writer is gone (the kernel drops a dead process's locks). A lock,
unlike a PID in the name, cannot be fooled by a reused PID, by another PID namespace (a container)
or by another machine sharing the folder, so a live writer's file is never taken from it.
"""

import contextlib
import csv
import io
import json
import os
import stat
import tempfile

from .errors import UserError

try:
    import fcntl
except ImportError:  # no flock (Windows): temp files are never judged abandoned there
    fcntl = None

TEMP_PREFIX = ".tmp-missingglow-"  # distinctive: a shared folder's other `.tmp-` files stay theirs


class WriteError(UserError):
    """A file that could not be written; the file as it was before is untouched."""

    def __init__(self, path, err):
        self.path, self.reason = os.fspath(path), err.strerror or str(err)
        super().__init__(
            f"cannot write {self.path} ({self.reason}); free some space or fix the "
            "folder's permissions, or write somewhere else (--out)"
        )


def atomic_write(path, write, mode=0o644):
    """Call write(file) on a binary temp file beside `path`, fsync it, then rename it over
    `path`. An OSError on the way becomes a WriteError."""
    folder = os.path.dirname(os.path.abspath(path))
    fd = tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = _locked_temp_file(folder)
        with os.fdopen(fd, "wb", closefd=False) as f:  # fd stays open: the lock outlives the rename
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
    finally:
        if fd is not None:
            os.close(fd)
    return path


def _locked_temp_file(folder):
    """(fd, path) of a new temp file in `folder` that this process holds an exclusive flock on.

    A cleaner may remove a new file in the instant before its writer locks it; the writer sees its
    file gone once it holds the lock and makes another."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        if fcntl is None or not _lock(fd, blocking=True) or _names(tmp, fd):
            return fd, tmp
        os.close(fd)


def _lock(fd, blocking):
    """True when an exclusive flock on fd is taken; False when another holder has it; None when
    the file system cannot tell (no lock support)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def _names(path, fd):
    """Whether `path` is still a name of the open file fd (not removed, not replaced)."""
    try:
        here, there = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def remove_abandoned_temp_files(folder):
    """Remove the temp files of atomic writes in `folder` whose writer is gone (killed mid-write);
    a live writer's file is kept. Returns [(path, bytes)] of what was removed. Never raises."""
    removed = []
    if fcntl is None:
        return removed
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # renamed into place or removed meanwhile, or not ours to open
        try:
            info = os.fstat(fd)
            # removed only while locked, and only if the name still is this file
            if stat.S_ISREG(info.st_mode) and _lock(fd, blocking=False) and _names(path, fd):
                with contextlib.suppress(OSError):
                    os.remove(path)
                    removed.append((path, info.st_size))
        finally:
            os.close(fd)
    return removed


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
