"""Temp files of killed writers are taken back; a live writer's temp file never is.

A writer is judged by the flock it holds on its temp file (atomic.py): the subprocesses here are
real writers, one killed mid-write and one kept alive mid-write, so the kernel's view of who holds
a lock is what the tests check, not a simulation of it.
"""

import os
import signal
import subprocess
import sys
import textwrap

from missingglow import atomic
from missingglow.data.cache import cache_path, open_dataset, synthetic_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A writer that writes part of its file, says so, then waits on stdin: "kill" kills it with
# SIGKILL mid-write (as a killed `prepare` dies), anything else lets it finish.
WRITER = textwrap.dedent("""
    import os, signal, sys
    from missingglow.atomic import atomic_write

    def write(f):
        f.write(b"\\0" * 100_000)
        f.flush()
        print("writing", flush=True)
        if sys.stdin.readline().strip() == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(b"done")

    atomic_write(sys.argv[1], write)
""")


def start_writer(path):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.stdout.readline() == "writing\n"
    return proc


def killed_writer(path):
    """Leave the temp file a writer killed mid-write leaves."""
    proc = start_writer(path)
    proc.stdin.write("kill\n")
    proc.stdin.flush()
    assert proc.wait() == -signal.SIGKILL


def temp_files(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(atomic.TEMP_PREFIX))


def test_a_killed_writers_temp_file_is_removed_and_a_live_ones_kept(tmp_path):
    killed_writer(tmp_path / "a.bin")
    (dead,) = temp_files(tmp_path)
    live = start_writer(tmp_path / "b.bin")
    try:
        (live_name,) = set(temp_files(tmp_path)) - {dead}
        others = [".tmp-someone-else", "a.mgcache", "notes.txt"]
        for name in others:
            (tmp_path / name).write_bytes(b"x")
        (tmp_path / (atomic.TEMP_PREFIX + "folder")).mkdir()

        removed = atomic.remove_abandoned_temp_files(tmp_path)

        assert removed == [(str(tmp_path / dead), 100_000)]
        assert temp_files(tmp_path) == sorted([live_name, atomic.TEMP_PREFIX + "folder"])
        assert all((tmp_path / name).read_bytes() == b"x" for name in others)
    finally:
        live.stdin.write("go on\n")
        live.stdin.close()
        assert live.wait() == 0
    # the live writer finished its write as if nothing had happened
    assert (tmp_path / "b.bin").read_bytes() == b"\0" * 100_000 + b"done"
    assert temp_files(tmp_path) == [atomic.TEMP_PREFIX + "folder"]


def test_a_writer_in_this_process_keeps_its_temp_file(tmp_path):
    seen = {}

    def write(f):
        f.write(b"abc")
        seen["before"] = temp_files(tmp_path)
        seen["removed"] = atomic.remove_abandoned_temp_files(tmp_path)
        seen["after"] = temp_files(tmp_path)

    atomic.atomic_write(tmp_path / "out.txt", write)
    assert len(seen["before"]) == 1 and seen["after"] == seen["before"]
    assert seen["removed"] == []
    assert (tmp_path / "out.txt").read_bytes() == b"abc" and temp_files(tmp_path) == []


def test_an_unlocked_temp_file_is_removed(tmp_path):
    """A temp file nobody holds a lock on (its writer gone before this version, or a crash)."""
    stale = tmp_path / (atomic.TEMP_PREFIX + "abcd1234")
    stale.write_bytes(b"12345")
    assert atomic.remove_abandoned_temp_files(tmp_path) == [(str(stale), 5)]
    assert not stale.exists()
    assert atomic.remove_abandoned_temp_files(tmp_path / "no such folder") == []


def test_open_dataset_takes_back_the_space_of_a_killed_build(tmp_path, capsys):
    folder = tmp_path / "cache"
    path = cache_path(synthetic_source(0, 12), 8, str(folder))
    killed_writer(path)
    assert len(temp_files(folder)) == 1
    live = start_writer(folder / "other.mgcache")
    try:
        cache = open_dataset(None, 8, cache_dir=str(folder), synthetic_count=12, workers=1)
        assert len(cache) == 12
        assert "removed 1 temporary files (0.1 MB)" in capsys.readouterr().err
        assert len(temp_files(folder)) == 1  # the live build's
    finally:
        live.stdin.write("go on\n")
        live.stdin.close()
        assert live.wait() == 0
    assert temp_files(folder) == []
