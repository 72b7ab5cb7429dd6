"""bench/train_speed.py at tiny shapes on the CPU: `--threads auto` must look at the load only once
the `--busy` processes run (else it counts the cores they are about to take as free), look again
while timing, and print the threads the timed steps actually used."""

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from helpers import ROOT, load_script

TINY = SimpleNamespace(blocks=2, flows=2, hidden=8, image_size=8, batch=4, n_bits=5, grad_clip=50.0)


def load_bench():
    return load_script("bench/train_speed.py", "train_speed")


def tiny_bench(monkeypatch):
    """The bench with every preset at TINY shapes."""
    bench = load_bench()
    monkeypatch.setattr(bench, "preset_config", lambda name: TINY)
    return bench


def bench_beside_sleepers(monkeypatch, **settings):
    """The bench at TINY shapes, its "busy" processes sleeping (the order of things is tested,
    not the load), and its module constants set from `settings`."""
    bench = tiny_bench(monkeypatch)
    monkeypatch.setattr(bench, "BUSY", "import time; time.sleep(60)")
    for name, value in settings.items():
        monkeypatch.setattr(bench, name, value)
    return bench


def test_auto_threads_look_after_the_busy_processes_start(monkeypatch, capsys, torch_threads):
    bench = bench_beside_sleepers(monkeypatch, LOOK_EVERY=3)
    busy, looks = [], []
    real_busy = bench.busy_processes

    def start_busy(n):
        busy.extend(real_busy(n))
        busy.append(time.monotonic())
        return busy[:-1]

    class Looking:
        """Threads as the bench uses it: records what each look saw, 1 thread then 2."""

        def __init__(self, setting, device, speak):
            assert setting is None
            looks.append((time.monotonic() - busy[-1], [p.poll() is None for p in busy[:-1]]))
            torch.set_num_threads(1)

        def update(self):
            looks.append((time.monotonic() - busy[-1], [p.poll() is None for p in busy[:-1]]))
            torch.set_num_threads(2)

    monkeypatch.setattr(bench, "busy_processes", start_busy)
    monkeypatch.setattr(bench, "Threads", Looking)
    argv = "--impl fused --steps 4 --warmup 1 --threads auto --busy 1 --device cpu".split()
    medians, used = bench.main(argv)
    first, *later = looks
    assert first[0] >= bench.SETTLE and first[1] == [True]  # the busy process ran, and long enough
    assert len(later) == 1 and later[0][1] == [True]  # iteration 3 of 0..4
    assert used == [1, 1, 2, 2]  # timed iterations 1..4: the count each actually ran with
    assert all(p.poll() is not None for p in busy[:-1])  # killed at the end
    out = capsys.readouterr().out
    assert "cpu, 1-2 threads," in out and "threads followed the load: 1 to 2" in out
    assert set(medians) == {"fused"} and medians["fused"] > 0


def test_a_fixed_thread_count_is_printed_plainly(monkeypatch, capsys, torch_threads):
    bench = tiny_bench(monkeypatch)
    _, used = bench.main("--impl both --steps 2 --warmup 0 --threads 1 --device cpu".split())
    assert used == [1, 1]
    out = capsys.readouterr().out
    assert "cpu, 1 threads," in out and "followed the load" not in out
    assert "fused speed-up" in out


def _state(pid):
    """A process's state letter from /proc ("T" when stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _states_once_settled(processes, within=5.0):
    """[stopped?] per process, read again until two reads agree (a signal takes effect a moment
    after it is sent), for at most `within` seconds."""
    deadline, last = time.monotonic() + within, None
    while True:
        now = [_state(p.pid) == "T" for p in processes]
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGSTOP"), reason="needs POSIX signals")
def test_busy_vs_idle_pauses_the_busy_processes_for_each_idle_step(
    monkeypatch, capsys, torch_threads
):
    """Every timed step follows a fresh look at the load, taken with the busy processes stopped
    for the idle steps and running for the busy ones; they are killed at the end."""
    bench = bench_beside_sleepers(monkeypatch, SETTLE=0.05, BURST=2)
    started, looks, steps = [], [], []
    real_step = bench.step
    monkeypatch.setattr(bench, "step", lambda *a: steps.append(len(looks)) or real_step(*a))
    real_busy = bench.busy_processes

    def start_busy(n):
        started.extend(real_busy(n))
        return started

    class Looking:
        """Threads as the bench uses it: what each look saw, 2 threads when idle, else 1."""

        fixed = False

        def __init__(self, setting, device, speak):
            assert setting is None

        def look(self, seconds):
            time.sleep(seconds)  # as Threads.look watches first (signals land meanwhile)
            stopped = _states_once_settled(started)
            looks.append(stopped)
            torch.set_num_threads(2 if all(stopped) else 1)

    monkeypatch.setattr(bench, "busy_processes", start_busy)
    monkeypatch.setattr(bench, "Threads", Looking)
    times, used = bench.main("--busy-vs-idle 1 --steps 3 --warmup 1 --device cpu".split())
    # the warm-up and 3 timed pairs, idle first then busy first in turn
    assert looks == [[True], [False], [False], [True]] * 2
    assert used == {"idle": [2, 2, 2], "busy": [1, 1, 1]}
    assert steps == [k for k in range(1, 9) for _ in range(2)]  # a burst of 2 after each look
    assert len(times["idle"]) == len(times["busy"]) == 3
    assert all(p.poll() is not None for p in started)
    out = capsys.readouterr().out
    assert "busy / idle:" in out and "threads auto," in out


def test_profile_sums_each_implementations_step_by_kind(monkeypatch, capsys, torch_threads):
    bench = tiny_bench(monkeypatch)
    bench.main("--impl both --steps 1 --warmup 0 --threads 1 --device cpu --profile".split())
    lines = [x for x in capsys.readouterr().out.splitlines() if " profile, " in x]
    assert [x.split()[0] for x in lines] == ["reference", "fused"]
    for line in lines:
        parts = dict(
            (kind.rsplit(" ", 3)[0], float(kind.rsplit(" ", 3)[1]))
            for kind in line.split(": ", 1)[1].split("; ")[0].split(", ")
        )
        assert set(parts) == {*bench.KINDS, "our ops", "autograd nodes", "other ops"}
        total = float(line.rsplit("total ", 1)[1])
        assert parts["convolutions"] > 0 and abs(sum(parts.values()) - total) <= 0.05 * (
            len(parts) + 1
        )  # rounding


def test_busy_vs_idle_refuses_the_options_it_sets_itself(capsys):
    bench = load_bench()
    for extra in ("--threads 2", "--busy 1", "--impl reference"):
        with pytest.raises(SystemExit) as stop:
            bench.main(f"--busy-vs-idle 1 {extra}".split())
        assert stop.value.code == 2
        assert "drop --threads, --busy and --impl reference" in capsys.readouterr().err


def test_busy_processes_die_with_the_bench(tmp_path):
    """A bench killed outright (no `finally` runs) takes its busy processes with it."""
    script = (
        "import sys, os; sys.path.insert(0, 'tests'); from helpers import load_script\n"
        "bench = load_script('bench/train_speed.py', 'train_speed')\n"
        "bench.BUSY = 'import time; time.sleep(60)'\n"
        "print(bench.busy_processes(1)[0].pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    try:
        while os.path.exists(f"/proc/{child}") and _state(child) != "Z":
            assert time.monotonic() < deadline, "the busy process outlived the bench"
            time.sleep(0.05)
    finally:
        if os.path.exists(f"/proc/{child}"):
            os.kill(child, signal.SIGKILL)
