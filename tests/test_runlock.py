"""One writer per run folder: a second `train` on a folder being trained stops with one line that
names the holder, and a lock left by a killed process never blocks the next run."""

import os
import signal
import subprocess
import sys
import time

import pytest

from missingglow.errors import UserError
from missingglow.training.runlock import RunLock

from helpers import TINY_CLI, run_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    *TINY_CLI,
    "--iterations",
    "2",
    "--eval-every",
    "1000",
    "--sample-every",
    "1000",
    "--quiet",
]


def holder(run_dir):
    """A process that holds the run's lock until killed; returns once it holds it."""
    code = (
        "import sys, time; sys.path.insert(0, %r); "
        "from missingglow.training.runlock import RunLock; "
        "lock = RunLock(%r).__enter__(); print('held', flush=True); time.sleep(600)"
        % (ROOT, str(run_dir))
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def train_cli(args, tmp_path):
    return run_in_process(["train", *args], env={"MISSINGGLOW_CACHE": tmp_path / "cache"})


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    try:
        out = train_cli(["--out", str(run_dir), *TINY], tmp_path)
        assert out.returncode == 2, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"process {proc.pid}" in errors[0], out.stderr
        assert "Traceback" not in out.stderr
        assert not (run_dir / "latest").exists()  # nothing was written beside the holder
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
    with RunLock(str(tmp_path)):  # free again
        time.sleep(0)


@pytest.mark.parametrize("damage", ["missing", "garbage", "binary", "truncated target"])
def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, damage):
    from missingglow.training import checkpoint as ckpt

    run_dir = tmp_path / "run"
    out = train_cli(["--out", str(run_dir), *TINY, "--checkpoint-every", "1"], tmp_path)
    assert out.returncode == 0, out.stderr
    latest = run_dir / "latest"
    newest = sorted((run_dir / "checkpoints").iterdir())[-1]
    if damage == "missing":
        latest.unlink()
    elif damage == "garbage":
        latest.write_text("garbage\n")
    elif damage == "binary":
        latest.write_bytes(b"\xff\x00\xfe")
    else:  # latest points at a checkpoint cut short: the one before it must be used
        newest.write_bytes(newest.read_bytes()[:100])
    said = []
    payload = ckpt.load_checkpoint(str(run_dir), say=said.append)
    expected = 1 if damage == "truncated target" else 2
    assert payload["iteration"] == expected and len(said) == 1 and "newest one that does" in said[0]
    out = train_cli(["--resume", str(run_dir), "--iterations", "3", "--quiet"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "newest one that does" in out.stderr and "Traceback" not in out.stderr


def test_a_run_that_fails_to_start_releases_its_lock(tmp_path, monkeypatch):
    from missingglow.training.config import resolve_config
    from missingglow.training.loop import train

    monkeypatch.setenv("MISSINGGLOW_CACHE", str(tmp_path / "cache"))
    config = resolve_config(
        dict(
            out=str(tmp_path / "run"),
            data=str(tmp_path / "no-such-folder"),
            image_size=8,
            blocks=2,
            flows=2,
            hidden=8,
            batch=8,
            square=3,
            iterations=1,
        ),
        has_gpu=False,
    )[0]
    with pytest.raises(UserError):
        train(config, progress=False)
    with RunLock(str(tmp_path / "run")):  # free again, in the same process
        pass


def test_the_analysis_commands_take_the_same_fallback(tmp_path):
    run_dir = tmp_path / "run"
    out = train_cli(["--out", str(run_dir), *TINY], tmp_path)
    assert out.returncode == 0, out.stderr
    (run_dir / "latest").write_text("garbage\n")
    out = run_in_process(
        ["sample", "--checkpoint", run_dir, "-n", "2", "--out", tmp_path / "s.png"],
        env={"MISSINGGLOW_CACHE": tmp_path / "cache"},
    )
    assert out.returncode == 0, out.stderr
    assert "newest one that does" in out.stderr
