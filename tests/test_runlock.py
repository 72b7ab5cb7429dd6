"""One writer per run folder: a second `train` on a folder being trained stops with one line that
names the holder, and a lock left by a killed process never blocks the next run."""
import os
import signal
import subprocess
import sys
import time

import pytest

from missingglow.errors import UserError
from missingglow.runlock import RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--size", "8", "--blocks", "2", "--flows", "2", "--hidden", "8", "--batch", "8",
        "--synthetic-count", "48", "--square", "3", "--iterations", "2", "--eval-every", "1000",
        "--sample-every", "1000", "--quiet"]


def holder(run_dir):
    """A process that holds the run's lock until killed; returns once it holds it."""
    code = ("import sys, time; sys.path.insert(0, %r); from missingglow.runlock import RunLock; "
            "lock = RunLock(%r).__enter__(); print('held', flush=True); time.sleep(600)"
            % (ROOT, str(run_dir)))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def train_cli(args, tmp_path):
    env = {**os.environ, "MISSINGGLOW_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "missingglow", "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    try:
        out = train_cli(["--out", str(run_dir), *TINY], tmp_path)
        assert out.returncode == 2, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"process {proc.pid}" in errors[0], out.stderr
        assert "Traceback" not in out.stderr
        assert not (run_dir / "latest").exists()      # nothing was written beside the holder
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holders_lock_does_not_block_the_next_run(tmp_path):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_dir / ".lock").exists()
    out = train_cli(["--out", str(run_dir), *TINY], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (run_dir / "latest").exists()


def test_the_lock_is_released_when_its_holder_is_done(tmp_path):
    with RunLock(str(tmp_path)):
        with pytest.raises(UserError, match=f"process {os.getpid()}"):
            RunLock(str(tmp_path)).__enter__()
    with RunLock(str(tmp_path)):   # free again
        time.sleep(0)
