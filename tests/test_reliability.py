"""Faults a user's machine will produce, tried on purpose (docs/reliability.md): a full disk and a
refused write for every kind of output, a hostile pickle posing as a checkpoint, a decompression
bomb among the images, and a rank killed under torchrun. Each gives one `error:` line (or a named
skip), exit code 2, no traceback, no temp file, and nothing already written is lost."""

import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import pytest
import torch

from missingglow import atomic
from missingglow.cli import main
from missingglow.data.imagefolder import load_square
from missingglow.data.synthetic import draw_face
from missingglow.training import checkpoint as ckpt

from helpers import TINY_CLI, run_in_process, tiny_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [
    "train",
    *TINY_CLI,
    "--warmup",
    "2",
    "--eval-every",
    "2",
    "--sample-every",
    "2",
    "--checkpoint-every",
    "2",
    "--quiet",
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MISSINGGLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run_cli(args, capsys):
    """(exit code, stdout, stderr) of the command line, in this process."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err):
    """The one `error:` line a failed command printed last (a progress line may precede it)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [
        i for i, x in enumerate(lines) if x.startswith("error:")
    ] == [len(lines) - 1], err
    return lines[-1]


def temp_files(root):
    return [
        os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.startswith(".tmp-")
    ]


def refuse(monkeypatch, where, error=errno.ENOSPC, after=0):
    """Make writes into a folder whose path contains `where` fail as a full disk (or `error`)
    does, after `after` of them succeeded: atomic writes at their fsync, log lines half-way."""
    seen = {"n": 0}

    def failing(path):
        if where in path:
            seen["n"] += 1
            return seen["n"] > after
        return False

    real_fsync, real_open = os.fsync, open

    def fsync(fd):
        if failing(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(error, os.strerror(error))
        return real_fsync(fd)

    class HalfWrites:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(error, os.strerror(error))

    def open_(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return HalfWrites(f) if "a" in mode and failing(os.fspath(path)) else f

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(atomic, "open", open_, raising=False)


@pytest.mark.parametrize(
    "where, after", [("checkpoints", 1), ("metrics", 3), ("samples", 0), ("/run/", 0)]
)
def test_training_that_cannot_write_names_the_last_good_checkpoint(
    tmp_path, cache, capsys, monkeypatch, where, after
):
    run = tmp_path / "run"
    before = None
    if where != "/run/":  # a run with a checkpoint to lose, then a failing resume
        assert run_cli([*TRAIN, "--iterations", "2", "--out", run], capsys)[0] == 0
        before = (run / "metrics.jsonl").read_bytes(), ckpt.load_checkpoint(run)["iteration"]
    refuse(monkeypatch, where, after=after)
    args = (
        ["train", "--resume", run, "--iterations", "8", "--quiet"]
        if before
        else [*TRAIN, "--iterations", "4", "--out", run]
    )
    code, out, err = run_cli(args, capsys)
    err = error_line(err)
    assert code == 2 and err.startswith("error: cannot write") and where in err.split(";")[0]
    assert "No space left on device" in err
    assert not temp_files(tmp_path)
    if before is None:
        assert "no checkpoint was written yet" in err
        return
    last = ckpt.resolve(str(run))
    assert f"the last good checkpoint, {last}, is intact" in err and f"--resume {run}" in err
    ckpt.load_checkpoint(str(run))
    with open(run / "metrics.jsonl", "rb") as f:  # every line whole, the old ones kept
        log = f.read()
    assert log.startswith(before[0]) and log.endswith(b"\n")
    monkeypatch.undo()
    monkeypatch.setenv("MISSINGGLOW_CACHE", str(cache))
    assert run_cli(["train", "--resume", run, "--iterations", "8", "--quiet"], capsys)[0] == 0
    assert ckpt.load_checkpoint(str(run))["iteration"] == 8


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reliability")
    run = tiny_run(str(base / "run"), base / "cache")
    draw_face(0, 1, 16).save(base / "face.png")
    return base, run


OUTPUTS = {  # command, the folder its writes go to
    "sample": (["sample", "-n", "2", "--out", "{out}/s.png"], "out"),
    "squares": (["squares", "-t", "0.5", "-n", "2", "--out", "{out}/t1"], "out"),
    "impute": (
        [
            "impute",
            "{face}",
            "--square",
            "2,2,4",
            "--keep-observed",
            "--method",
            "alpha",
            "--alpha",
            "0.6",
            "--out",
            "{out}/imp",
        ],
        "out",
    ),
    "invert": (["impute", "heldout:0", "--steps", "2", "--out", "{out}/inv"], "out"),
    "evaluate": (
        [
            "evaluate",
            "-n",
            "2",
            "--alpha",
            "0.6",
            "--iterations",
            "1",
            "--steps",
            "2",
            "--no-classical",
            "--out",
            "{out}/ev",
        ],
        "out",
    ),
    "latent-norms": (["latent-norms", "-n", "2", "--out", "{out}/ln"], "out"),
    "prepare": (["prepare", "--size", "8", "--synthetic-count", "20", "--cache", "{out}/c"], "out"),
}


@pytest.mark.parametrize("command", list(OUTPUTS))
@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES])
def test_an_output_that_cannot_be_written_is_one_line(
    small_run, tmp_path, capsys, monkeypatch, command, error
):
    base, run = small_run
    monkeypatch.setenv("MISSINGGLOW_CACHE", str(base / "cache"))
    args, where = OUTPUTS[command]
    args = [a.format(out=tmp_path / "out", face=base / "face.png") for a in args]
    if command != "prepare":
        args += ["--checkpoint", run]
    refuse(monkeypatch, str(tmp_path / where), error)
    code, out, err = run_cli(args, capsys)
    err = error_line(err)
    assert code == 2 and err.startswith("error: cannot write"), err
    assert os.strerror(error) in err
    assert not temp_files(tmp_path)


def test_a_failed_write_keeps_the_file_it_would_replace(tmp_path, monkeypatch):
    path = tmp_path / "table.csv"
    atomic.write_text(path, "old\n")
    refuse(monkeypatch, str(tmp_path))
    with pytest.raises(atomic.WriteError, match="No space left"):
        atomic.write_text(path, "new\n")
    assert path.read_text() == "old\n" and not temp_files(tmp_path)


def full_disk(path, size):
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")


def test_training_on_a_real_full_disk(tmp_path, cache):
    """A 1 MB tmpfs: the run fills it, stops with one line, and resumes once there is room."""
    disk = tmp_path / "disk"
    full_disk(disk, "1m")
    try:
        run = disk / "run"
        done = run_in_process(
            [
                *TRAIN,
                "--hidden",
                "48",
                "--checkpoint-every",
                "1",
                "--sample-every",
                "1000",
                "--iterations",
                "400",
                "--out",
                run,
            ]
        )
        line = error_line(done.stderr)
        assert done.returncode == 2 and "No space left on device" in line, done.stderr
        assert "is intact" in line and not temp_files(disk)
        iteration = ckpt.load_checkpoint(str(run))["iteration"]
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = run_in_process(
            ["train", "--resume", run, "--iterations", iteration + 2, "--quiet"]
        )
        assert resumed.returncode == 0, resumed.stderr
        assert ckpt.load_checkpoint(str(run))["iteration"] == iteration + 2
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


class Hostile:
    """Unpickling this would run a command; weights_only loading must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_hostile_pickle_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"format": ckpt.FORMAT, "model": Hostile(marker)}, tmp_path / "evil.pt")
    code, out, err = run_cli(["sample", "--checkpoint", tmp_path / "evil.pt"], capsys)
    assert code == 2 and err.startswith("error: cannot read checkpoint") and "Traceback" not in err
    assert not marker.exists()


def bomb(path, side):
    """A PNG that claims side × side pixels in a few hundred bytes."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    head = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def test_a_decompression_bomb_is_skipped_by_name(tmp_path, capsys):
    data, why = load_square(bomb(tmp_path / "bomb.png", 30_000), 16)
    assert data is None and why.endswith("refused as a possible decompression bomb")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        draw_face(0, i, 16).save(folder / f"{i}.png")
    shutil.copy(tmp_path / "bomb.png", folder / "bomb.png")
    code, out, err = run_cli(
        ["prepare", "--data", folder, "--size", "8", "--cache", tmp_path / "c"], capsys
    )
    assert code == 0 and "prepared 3 images" in err
    assert "bomb.png (more than" in err and "decompression bomb" in err


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _rank(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    return int(env.get(b"RANK", b"-1"))


@pytest.mark.skipif(
    shutil.which("torchrun") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun not installed",
)
def test_a_rank_killed_under_torchrun_leaves_a_resumable_run(tmp_path, cache):
    run = tmp_path / "run"
    env = dict(os.environ, MISSINGGLOW_CACHE=str(cache), OMP_NUM_THREADS="1")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    group = subprocess.Popen(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "missingglow",
            *TRAIN,
            "--checkpoint-every",
            "1",
            "--iterations",
            "100000",
            "--out",
            str(run),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while (
            time.time() < deadline
            and not (run / "checkpoints").is_dir()
            or len(os.listdir(run / "checkpoints")) < 2
        ):
            assert group.poll() is None, group.communicate()[1].decode()[-2000:]
            time.sleep(0.1)
        ranks = {_rank(p): p for p in _children(group.pid)}
        os.kill(ranks[1], signal.SIGKILL)
        group.wait(timeout=120)
    finally:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
            group.wait()
    assert group.returncode != 0
    payload = ckpt.load_checkpoint(str(run))
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "missingglow",
            "train",
            "--resume",
            str(run),
            "--iterations",
            str(payload["iteration"] + 2),
            "--quiet",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert ckpt.load_checkpoint(str(run))["iteration"] == payload["iteration"] + 2
