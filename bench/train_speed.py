"""Seconds per training iteration (forward + backward + Adam) of a preset, fused vs reference.

An iteration is the training loop's own step (training/step.py: forward, backward, clipping, the
device-side guard and the optimiser training uses, training/adam.py) unless `--optimiser torch`
asks for a bare torch.optim.Adam step, as this bench timed before.

Both implementations run in the same process, interleaved step by step, on the same batch, so the
ratio holds even on a busy machine; medians over the timed steps, and the median of the
step-by-step ratios beside the ratio of the medians.

    python bench/train_speed.py --preset small --steps 20
    python bench/train_speed.py --preset paper --steps 3 --threads 2
    python bench/train_speed.py --allocator default    # glibc's default, not training's setting
    python bench/train_speed.py --impl fused --busy 1  # beside a process that keeps a core busy
    python bench/train_speed.py --shared-cpu 3         # threads and OpenMP's wait policy, idle
                                                       # and beside a busy process, 3 rounds
    python bench/train_speed.py --profile              # then where each step's time goes
    python bench/train_speed.py --busy-vs-idle 1       # fused, idle and beside 1 busy process
                                                       # step by step in one process

Like `missingglow train`, it keeps freed heap memory (missingglow/training/allocator.py) unless
told not to. `--threads auto` sets the threads as training does (training/threads.py): it looks
at the load after the `--busy` processes have started and again every few iterations, and the
threads each timed step ran with are printed (a range when they changed).
`--busy-vs-idle N` times the same fused model idle and beside N busy processes in turn, in one
process: the busy processes are paused (SIGSTOP) for each idle phase and resumed for each busy
one, threads on `auto` look at the load afresh before each phase, a phase is a few steps in a row
(the first, cold after the look, untimed), each pair's order alternates, and the ratio is the
median of the pairs' busy/idle, so a slow spell of the machine slows both sides of a pair.
`--shared-cpu` runs this script in a fresh process per setting (OpenMP reads OMP_WAIT_POLICY when
it starts), the settings interleaved round by round, so that the ratios hold on a loaded machine.
"""

import argparse
import contextlib
import ctypes
import os
import signal
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from missingglow import Glow  # noqa: E402
from missingglow.flow.preprocess import bits_per_dim  # noqa: E402
from missingglow.training.adam import GuardedAdam  # noqa: E402
from missingglow.training.allocator import keep_freed_memory  # noqa: E402
from missingglow.training.config import PRESETS, preset_config  # noqa: E402
from missingglow.training.loop import Distributed  # noqa: E402
from missingglow.training.step import TrainStep  # noqa: E402
from missingglow.training.threads import Threads  # noqa: E402

BUSY = "while True: pass"
SETTLE = 0.3  # seconds the busy processes run before `--threads auto` looks
BURST = 3  # --busy-vs-idle: steps in a row per phase, the first (cold after the look) untimed
LOOK_EVERY = 5  # iterations between looks at the load under `--threads auto`


def make(p, impl):
    torch.manual_seed(0)
    return Glow(blocks=p.blocks, flows=p.flows, hidden=p.hidden, image_size=p.image_size, impl=impl)


def batch(p, device):
    """A preset's batch of images in model space."""
    return (torch.rand(p.batch, 3, p.image_size, p.image_size) - 0.5).to(device)


def prepared(p, impl, x, kind):
    """(model, optimiser) of `impl` on x's device, ActNorm initialised from the batch x."""
    model = make(p, impl).to(x.device)
    with torch.no_grad():
        model.log_prob(x)  # ActNorm init
    return model, optimiser(model, x, p, kind)


def step(model, optimizer, x, bits):
    sync(x.device)
    start = time.perf_counter()
    if isinstance(optimizer, TrainStep):
        optimizer.optimizer.stage_lr()
        optimizer()
    else:
        loss = bits_per_dim(model.log_prob(x), bits, x[0].numel()).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(x.device)
    return time.perf_counter() - start


def optimiser(model, x, p, kind):
    """What one timed iteration runs after the forward: training's whole step (a TrainStep on
    the static input x, reading nothing back) or a bare torch.optim.Adam."""
    if kind == "torch":
        return torch.optim.Adam(model.parameters(), lr=1e-4)
    params = [q for q in model.parameters() if q.requires_grad]
    dims = x[0].numel()
    train_step = TrainStep(
        lambda batch: bits_per_dim(model.log_prob(batch), p.n_bits, dims).mean(),
        params,
        GuardedAdam(params, 1e-4, x.device),
        x.shape,
        x.device,
        p.grad_clip or float("inf"),
        Distributed(),
    )
    train_step.x.copy_(x)
    return train_step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def busy_processes(n):
    """n processes that keep a core busy each, as another user's job would; each is killed by
    the system when this process dies, even stopped or killed itself."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", BUSY],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        for _ in range(n)
    ]


@contextlib.contextmanager
def busy(n):
    """The list of n busy processes (busy_processes), killed on the way out."""
    others = []
    try:
        others.extend(busy_processes(n))
        yield others
    finally:
        for proc in others:
            proc.kill()
            proc.wait()


def _die_with_parent():
    """In a child before it starts: SIGKILL it when its parent dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def busy_vs_idle(args):
    """({"idle": seconds a step of each timed phase, "busy": ...}, their thread counts): the
    fused model's steps idle and beside `args.busy_vs_idle` busy processes in turn (see the
    module docstring)."""
    p = preset_config(args.preset)
    x = batch(p, args.device)
    model, optimizer = prepared(p, "fused", x, args.optimiser)
    times, used = {"idle": [], "busy": []}, {"idle": [], "busy": []}
    with busy(args.busy_vs_idle) as others:
        pause(others, signal.SIGSTOP)
        threads = set_threads("auto", args.device)
        for i in range(args.warmup + args.steps):
            # the pair's order alternates, so that neither side always follows the other
            for phase in ("idle", "busy") if i % 2 == 0 else ("busy", "idle"):
                pause(others, signal.SIGCONT if phase == "busy" else signal.SIGSTOP)
                threads.look(SETTLE)
                # back-to-back steps as training runs them: the first after the look is cold
                burst = [step(model, optimizer, x, p.n_bits) for _ in range(BURST)][1:]
                if i >= args.warmup:
                    times[phase].append(statistics.mean(burst))
                    used[phase].append(torch.get_num_threads())
    setting = "fixed by OMP_NUM_THREADS" if threads.fixed else "auto"
    print(
        f"preset {args.preset}: fused, {args.device}, threads {setting}, {args.steps} timed "
        f"steps each idle and beside {args.busy_vs_idle} busy processes, in turn"
    )
    print(f"{'phase':<6} {'s/iter':>8} {'threads':>8}")
    for phase in ("idle", "busy"):
        print(f"{phase:<6} {statistics.median(times[phase]):8.3f} {thread_range(used[phase]):>8}")
    paired = statistics.median(b / i for b, i in zip(times["busy"], times["idle"], strict=True))
    print(f"busy / idle: {paired:.2f}x (median of the step pairs' ratios)")
    return times, used


def pause(processes, how):
    """Stop (SIGSTOP) or resume (SIGCONT) the busy processes."""
    for proc in processes:
        os.kill(proc.pid, how)


def shared_cpu(args):
    """Seconds per fused small-preset iteration for each thread setting and wait policy, with
    the machine as it is and beside one more busy process; `args.shared_cpu` rounds. Each run's
    time is printed as it comes, then the table."""
    settings = [
        (threads, policy, busy)
        for busy in (0, 1)
        for threads, policy in (("all", None), ("all", "PASSIVE"), ("1", None), ("auto", None))
    ]
    times = {s: [] for s in settings}
    for round_ in range(args.shared_cpu):
        for threads, policy, busy in settings:
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
            }
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            cmd = [
                sys.executable,
                __file__,
                "--preset",
                args.preset,
                "--impl",
                "fused",
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--busy",
                str(busy),
            ]
            if threads != "all":
                cmd += ["--threads", threads]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            line = next(x for x in out.splitlines() if x.startswith("fused "))
            used = next(x for x in out.splitlines() if x.startswith("preset "))
            run = (float(line.split()[1]), used.split(" threads")[0].split()[-1])
            times[(threads, policy, busy)].append(run)
            with open("/proc/loadavg") as f:
                load = f.read().split()[0]
            print(
                f"round {round_ + 1}: busy {busy}, threads {threads} ({run[1]} used), "
                f"{policy or 'default'}: {run[0]:.3f} s/iter (load {load})",
                flush=True,
            )
    print(
        f"preset {args.preset}, fused, {args.steps} timed steps a run, {args.shared_cpu} rounds, "
        f"{len(os.sched_getaffinity(0))} cores"
    )
    print(
        "| busy processes added | threads | OMP_WAIT_POLICY | threads used | s/iter (median "
        "of rounds) | each round |"
    )
    print("|---|---|---|---|---|---|")
    for (threads, policy, busy), runs in times.items():
        used = sorted({n for _, n in runs})
        print(
            f"| {busy} | {threads} | {policy or 'default'} | {'/'.join(used)} | "
            f"{statistics.median(t for t, _ in runs):.3f} | "
            f"{' '.join(f'{t:.3f}' for t, _ in runs)} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", default=None, help="a count, or auto (the cores other processes leave free)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--allocator",
        choices=["keep", "default"],
        default="keep",
        help="keep freed heap memory, as training does, or glibc's default",
    )
    parser.add_argument("--impl", choices=["both", "fused", "reference"], default="both")
    parser.add_argument(
        "--optimiser",
        choices=["training", "torch"],
        default="training",
        help="training's whole step (clipping, guard, its Adam) or a bare torch.optim.Adam",
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="processes that keep a core busy each while this one is timed",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after timing, where each implementation's step spends its time (torch profiler)",
    )
    parser.add_argument(
        "--busy-vs-idle",
        type=int,
        default=0,
        metavar="N",
        help="fused steps idle and beside N busy processes in turn, threads on auto",
    )
    parser.add_argument(
        "--shared-cpu",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="compare thread settings and wait policies, idle and beside a busy "
        "process (fused only)",
    )
    args = parser.parse_args(argv)
    if args.shared_cpu:
        shared_cpu(args)
        return
    if args.busy_vs_idle and (args.threads or args.busy or args.impl == "reference"):
        parser.error(
            "--busy-vs-idle times the fused step with threads on auto and its own "
            "busy processes: drop --threads, --busy and --impl reference"
        )
    kept = args.allocator == "keep" and keep_freed_memory()
    if args.busy_vs_idle:
        return busy_vs_idle(args)
    # the busy processes run before `--threads auto` looks at the load, as another user's job
    # would be running when training starts
    with busy(args.busy) as others:
        if others:
            time.sleep(SETTLE)
        threads = set_threads(args.threads, args.device)
        runs, used, x = timed_steps(args, threads)
    p = preset_config(args.preset)
    print(
        f"preset {args.preset}: {p.image_size}x{p.image_size}, {p.blocks} blocks x "
        f"{p.flows} flows, hidden {p.hidden}, batch {p.batch}, "
        f"{args.device}, {thread_range(used)} threads, {args.steps} timed steps (median), "
        f"{'freed heap kept' if kept else 'glibc default allocator'}, "
        f"{'training step' if args.optimiser == 'training' else 'torch.optim.Adam'}"
        f"{f', beside {args.busy} busy processes' if args.busy else ''}"
    )
    if min(used) != max(used):
        print(f"threads followed the load: {min(used)} to {max(used)} during the timed steps")
    print(f"{'impl':<10} {'s/iter':>8} {'images/s':>9}")
    medians = {}
    for impl, (_, _, times) in runs.items():
        medians[impl] = statistics.median(times)
        print(f"{impl:<10} {medians[impl]:8.3f} {p.batch / medians[impl]:9.1f}")
    if len(medians) == 2:
        # also the median of each step's own ratio: the two steps of a pair ran back to back,
        # so a slow spell of a shared machine slows both
        paired = statistics.median(
            r / f for r, f in zip(runs["reference"][2], runs["fused"][2], strict=True)
        )
        print(
            f"fused speed-up: {medians['reference'] / medians['fused']:.2f}x "
            f"(median of the step pairs' ratios: {paired:.2f}x)"
        )
    if args.profile:
        for impl, (model, optimizer, _) in runs.items():
            print(profile_line(impl, model, optimizer, x, p.n_bits))
    return medians, used


# what `--profile` sums a step's self CPU time into, by the profiler's op names
KINDS = {
    "convolutions": (
        "aten::mkldnn_convolution",
        "aten::convolution_backward",
        "aten::_slow_conv2d_forward",  # ATen's own, where oneDNN is not used
        "aten::_slow_conv2d_backward",
    ),
    "ReLU": ("aten::relu_", "aten::relu", "aten::clamp_min_", "aten::threshold_backward"),
    "GEMMs": ("aten::mm", "aten::addmm", "aten::bmm"),
}


def profile_line(impl, model, optimizer, x, bits, steps=10):
    """One line: ms per step of self CPU time by kind (KINDS; our ops; autograd's nodes; every
    other op), over `steps` steps under torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(model, optimizer, x, bits)
    sums = dict.fromkeys([*KINDS, "our ops", "autograd nodes", "other ops"], 0.0)
    for event in prof.key_averages():
        name = event.key
        kind = next((k for k, names in KINDS.items() if name in names), None)
        if kind is None and name.startswith("missingglow::"):
            kind = "our ops"
        elif kind is None and (name.startswith("autograd::") or "Backward" in name):
            kind = "autograd nodes"
        sums[kind or "other ops"] += event.self_cpu_time_total / 1e3 / steps
    total = sum(sums.values())
    parts = ", ".join(f"{k} {v:.1f} ({100 * v / total:.0f} %)" for k, v in sums.items())
    return f"{impl} profile, ms of self CPU time per step: {parts}; total {total:.1f}"


def set_threads(setting, device):
    """torch's threads from `--threads`: a count, or `auto` followed as training follows it (a
    Threads, returned to be updated), or None for torch's own."""
    if setting == "auto":
        return Threads(None, device, lambda line: None)
    if setting:
        torch.set_num_threads(int(setting))
    return None


def timed_steps(args, threads):
    """({impl: (model, optimizer, seconds of each timed step)}, threads of each timed step, the
    batch). The threads are looked at again every LOOK_EVERY iterations, between steps, as
    training looks at every log."""
    p = preset_config(args.preset)
    x = batch(p, args.device)
    runs = {}
    impls = ("reference", "fused") if args.impl == "both" else (args.impl,)
    for impl in impls:
        runs[impl] = (*prepared(p, impl, x, args.optimiser), [])
    used = []
    for i in range(args.warmup + args.steps):
        if threads is not None and i and i % LOOK_EVERY == 0:
            threads.update()
        for _impl, (model, optimizer, times) in runs.items():
            t = step(model, optimizer, x, p.n_bits)
            if i >= args.warmup:
                times.append(t)
        if i >= args.warmup:
            used.append(torch.get_num_threads())
    return runs, used, x


def thread_range(used):
    """The thread count as printed: one number, or low-high when it changed while timed."""
    low, high = min(used), max(used)
    return str(low) if low == high else f"{low}-{high}"


if __name__ == "__main__":
    main()
