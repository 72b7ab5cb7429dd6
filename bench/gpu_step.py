"""One training step in its variants, timed in one process at the paper's and the small preset's
shapes: the step as the loop ran it before (host reads every step, blocking batch copies), the
sync-free step (training/step.py) run eagerly, the same step as one CUDA graph, that step through
the C++ flow-step driver (`FusedFlowStep.driver`, opt-in: timed beside the default so a GPU run
can confirm or reverse that choice), and bf16 when Glow takes a `precision`. For each: wall time
per step, and from torch.profiler the kernel time, kernel launches and host waits per step, the
GPU's busy share, the sync-like ops per step (training/syncs.py) and how many flow steps ran
through the driver. It checks that graph replays end where eager steps do, and estimates what
held-out evaluation and checkpoints add to a step at their default intervals.

    python bench/gpu_step.py --out gpu_step.json                # CUDA: paper and small
    python bench/gpu_step.py --device cpu --presets small        # the CPU: no graph, no kernels
    python bench/gpu_step.py --device cpu --presets tiny --steps 2   # a smoke run (the test's)

Writes JSON (--out) and prints a table. What needs CUDA is skipped on the CPU with a note.
"""

import argparse
import copy
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from missingglow.flow.fused_step import FusedFlowStep  # noqa: E402
from missingglow.flow.model import Glow  # noqa: E402
from missingglow.flow.preprocess import bits_per_dim  # noqa: E402
from missingglow.training.adam import GuardedAdam  # noqa: E402
from missingglow.training.allocator import keep_freed_memory  # noqa: E402
from missingglow.training.config import TrainConfig, preset_config  # noqa: E402
from missingglow.training.heldout import HeldoutEval  # noqa: E402
from missingglow.training.saver import CheckpointWriter  # noqa: E402
from missingglow.training.step import Feed, Stepper, TrainStep, synced_step  # noqa: E402
from missingglow.training.syncs import cuda_waits, sync_ops  # noqa: E402

SHAPES = {
    "paper": dict(size=64, blocks=4, flows=32, hidden=512, batch=16),
    "small": {
        k: getattr(preset_config("small"), v)
        for k, v in (
            ("size", "image_size"),
            ("blocks", "blocks"),
            ("flows", "flows"),
            ("hidden", "hidden"),
            ("batch", "batch"),
        )
    },
    "tiny": dict(size=8, blocks=2, flows=2, hidden=8, batch=8),
}
DEFAULTS = TrainConfig()
ONE = SimpleNamespace(all_finite=lambda flag: flag)  # one process
LAUNCHES = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaGraphLaunch",
    "cudaMemcpyAsync",
    "cudaMemsetAsync",
)


def has_precision():
    return "precision" in inspect.signature(Glow).parameters


def build(shape, device, host, precision=None, driver=None):
    """A fused Glow at `shape` with ActNorm initialised on the first batch, and its loss; its flow
    steps set to `driver` (None: the default)."""
    torch.manual_seed(0)
    extra = {"precision": precision} if precision else {}
    model = Glow(
        blocks=shape["blocks"],
        flows=shape["flows"],
        hidden=shape["hidden"],
        image_size=shape["size"],
        impl="fused",
        **extra,
    ).to(device)
    if driver is not None:
        for module in model.modules():
            if isinstance(module, FusedFlowStep):
                module.driver = driver
    with torch.no_grad():
        model.log_prob(host[0].to(device))
    dims = host[0][0].numel()

    def loss_of(x):
        return bits_per_dim(model.log_prob(x), DEFAULTS.n_bits, dims).mean()

    return model, [p for p in model.parameters() if p.requires_grad], loss_of


class HostBatches:
    """Batches in pageable host memory, as the data pipeline makes them."""

    def __init__(self, shape, count):
        gen = torch.Generator().manual_seed(0)
        size = shape["size"]
        self.items = [
            torch.rand(shape["batch"], 3, size, size, generator=gen) - 0.5 for _ in range(count)
        ]

    def __getitem__(self, i):
        return self.items[i % len(self.items)]

    def batch(self, iteration):
        return self[iteration]


def synced_variant(shape, device, host):
    """The step as the loop ran it before: a blocking copy, host reads every step."""
    model, params, loss_of = build(shape, device, host)
    optimizer = torch.optim.Adam(params, lr=DEFAULTS.lr)

    def one(i):
        synced_step(loss_of, params, optimizer, host[i].to(device), DEFAULTS.grad_clip, ONE)

    return SimpleNamespace(one=one, finish=lambda: sync(device), model=model, optimizer=optimizer)


def sync_free_variant(shape, device, host, graph, precision=None, driver=None):
    """The loop's step: pinned double-buffered copies, the guard on the device, maybe a graph."""
    model, params, loss_of = build(shape, device, host, precision, driver)
    optimizer = GuardedAdam(params, DEFAULTS.lr, device)
    step = TrainStep(loss_of, params, optimizer, host[0].shape, device, DEFAULTS.grad_clip, ONE)
    feed = Feed(host, step.x)
    notes = []
    stepper = Stepper(step, graph, notes.append)

    def one(i):
        feed(i)
        stepper()

    return SimpleNamespace(
        one=one,
        finish=lambda: step.log.read(0),
        model=model,
        optimizer=optimizer,
        stepper=stepper,
        notes=notes,
    )


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_steps(variant, warmup, steps, start=0):
    """Seconds per step over `steps` steps after `warmup`, the queue drained at the end."""
    for i in range(warmup):
        variant.one(start + i)
    variant.finish()
    began = time.perf_counter()
    for i in range(steps):
        variant.one(start + warmup + i)
    variant.finish()
    return (time.perf_counter() - began) / steps


def profile_steps(variant, device, steps):
    """Per step: kernel ms, kernels, launches, host waits, sync-like ops (torch.profiler)."""
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            variant.one(i)
        variant.finish()
    events = prof.events()
    out = {
        "sync_ops_per_step": sum(sync_ops(events).values()) / steps,
        "sync_ops": dict(sync_ops(events)),
    }
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        out.update(
            kernel_ms_per_step=sum(e.device_time for e in kernels) / 1000 / steps,
            kernels_per_step=len(kernels) / steps,
            launches_per_step=sum(e.name in LAUNCHES for e in events) / steps,
            host_waits_per_step=sum(cuda_waits(events).values()) / steps,
        )
    return out


def measure(name, make, device, args):
    variant = make()
    wall = [time_steps(variant, args.warmup, args.steps) for _ in range(args.repeats)]
    row = {
        "wall_ms_per_step": 1000 * statistics.median(wall),
        "wall_ms_each": [round(1000 * w, 3) for w in wall],
    }
    row.update(profile_steps(variant, device, args.profile_steps))
    if "kernel_ms_per_step" in row:
        row["gpu_busy"] = row["kernel_ms_per_step"] / row["wall_ms_per_step"]
    row["driver_steps"] = sum(
        isinstance(m, FusedFlowStep) and m.uses_driver(device) for m in variant.model.modules()
    )
    if getattr(variant, "stepper", None) is not None:
        row["captured"] = variant.stepper.captures > 0
        row["notes"] = variant.notes
    print(
        f"  {name}: {row['wall_ms_per_step']:.1f} ms/step, "
        f"{row['sync_ops_per_step']:.2f} sync-like ops/step",
        flush=True,
    )
    return row, variant


def graph_matches_eager(shape, device, host, steps):
    """Parameters after `steps` graph replays against `steps` eager steps from the same state."""
    variant = sync_free_variant(shape, device, host, graph=False)
    model, optimizer = variant.model, variant.optimizer
    for i in range(3):  # Adam's state and ActNorm's flags, made eagerly
        variant.one(i)
    variant.finish()
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    for i in range(3, 3 + steps):
        variant.one(i)
    eager = {k: v.clone() for k, v in model.state_dict().items()}
    eager_sums = variant.finish()
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    stepper = variant.stepper
    stepper.step.log.clear()
    with torch.no_grad():
        model.log_prob(stepper.step.x)  # ActNorm's flags are read again here, not in the capture
    stepper.graph, stepper.warmup = True, 0
    stepper.side = torch.cuda.Stream()
    stepper.reset()
    for i in range(3, 3 + steps):
        variant.one(i)
    graph_sums = variant.finish()
    diff = max(
        (eager[k].double() - v.double()).abs().max().item()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    )
    return {
        "steps": steps,
        "captured": stepper.captures == 1,
        "max_abs_diff": diff,
        "bitwise_equal": diff == 0.0,
        "eager_loss_sum": eager_sums["loss_sum"],
        "graph_loss_sum": graph_sums["loss_sum"],
        "notes": variant.notes,
    }


class RandomHeldout:
    """Held-out-shaped random images (masked and clean) for timing the evaluation."""

    def __init__(self, n, size):
        gen = torch.Generator().manual_seed(1)
        self.clean = torch.rand(n, 3, size, size, generator=gen)
        self.masked = self.clean.clone()
        self.masked[:, :, : size // 4, : size // 4] = 128 / 255

    def __len__(self):
        return len(self.clean)

    def batch(self, indices):
        return self.masked[indices], self.clean[indices], None


def periodic(shape, device, variant, step_s, host, args):
    """Seconds of a held-out evaluation at the default eval batch and of a checkpoint (the part
    that holds up the loop, and the write behind it), and their share of a step at the default
    intervals."""
    evaluate = HeldoutEval(
        RandomHeldout(DEFAULTS.heldout_images, shape["size"]),
        DEFAULTS.n_bits,
        0,
        DEFAULTS.heldout_images,
        DEFAULTS.eval_batch,
        device,
        3,
    )
    model = variant.model
    model.eval()
    evaluate(model)
    began = time.perf_counter()
    evaluate(model)
    eval_s = time.perf_counter() - began
    model.train()
    payload = {
        "model": model.state_dict(),
        "optimizer": variant.optimizer.state_dict(),
        "iteration": 1,
        "state": {},
        "rng": {"torch": torch.get_rng_state()},
    }
    with tempfile.TemporaryDirectory() as folder:
        writer = CheckpointWriter(folder)
        writer.save(payload)  # the host buffers are made once per run
        writer.wait()
        sync(device)
        began = time.perf_counter()
        writer.save(payload)
        held_s = time.perf_counter() - began
        writer.wait()
        write_s = time.perf_counter() - began
        size = os.path.getsize(os.path.join(folder, "checkpoints", "ckpt-00000001.pt"))
        # the steps that run while a write is in flight, against the same steps without one
        quiet = time_steps(variant, 0, args.steps, start=100)
        writer.save(payload)
        during = time_steps(variant, 0, args.steps, start=100)
        writer.wait()
    stall_s = max(0.0, (during - quiet) * args.steps)
    every_eval, every_ckpt = DEFAULTS.eval_every, DEFAULTS.checkpoint_every
    added = eval_s / every_eval + (held_s + stall_s) / every_ckpt
    return {
        "eval_s": eval_s,
        "eval_batch": DEFAULTS.eval_batch,
        "heldout_images": DEFAULTS.heldout_images,
        "checkpoint_held_s": held_s,
        "checkpoint_write_s": write_s,
        "checkpoint_mb": size / 2**20,
        "steps_during_write_extra_s": stall_s,
        "eval_every": every_eval,
        "checkpoint_every": every_ckpt,
        "step_s": step_s,
        "share_of_a_step": added / step_s,
    }


def run_preset(name, device, args):
    shape = SHAPES[name]
    cuda = torch.device(device).type == "cuda"
    host = HostBatches(shape, 8)
    print(f"{name}: {shape}", flush=True)
    result = {"shape": shape, "variants": {}}
    variants = result["variants"]
    variants["synced"], _ = measure(
        "synced (the loop before)", lambda: synced_variant(shape, device, host), device, args
    )
    variants["sync_free"], best = measure(
        "sync-free, eager", lambda: sync_free_variant(shape, device, host, False), device, args
    )
    best_row = variants["sync_free"]
    if cuda:
        variants["graph"], best = measure(
            "sync-free, CUDA graph",
            lambda: sync_free_variant(shape, device, host, True),
            device,
            args,
        )
        best_row = variants["graph"]
        result["graph_matches_eager"] = graph_matches_eager(shape, device, host, args.check_steps)
    else:
        variants["graph"] = {"skipped": "a CUDA graph needs a CUDA device"}
        result["graph_matches_eager"] = {"skipped": "a CUDA graph needs a CUDA device"}
    variants["driver"], _ = measure(
        "C++ driver" + (", CUDA graph" if cuda else ", eager"),
        lambda: sync_free_variant(shape, device, host, cuda, driver=True),
        device,
        args,
    )
    if has_precision():
        variants["bf16"], _ = measure(
            "bf16" + (", CUDA graph" if cuda else ", eager"),
            lambda: sync_free_variant(shape, device, host, cuda, precision="bf16"),
            device,
            args,
        )
    else:
        variants["bf16"] = {"skipped": "Glow has no `precision` argument in this checkout"}
    result["periodic"] = periodic(
        shape, device, best, best_row["wall_ms_per_step"] / 1000, host, args
    )
    return result


def table(results):
    lines = [
        "| shapes | variant | wall ms/step | kernel ms/step | GPU busy | kernels/step | "
        "launches/step | host waits/step | sync-like ops/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results["presets"].items():
        for variant, row in result["variants"].items():
            if "skipped" in row:
                lines.append(f"| {name} | {variant} | {row['skipped']} | | | | | | |")
                continue

            def cell(key, spec):
                return format(row[key], spec) if key in row else ""

            lines.append(
                f"| {name} | {variant} | {cell('wall_ms_per_step', '.1f')} | "
                f"{cell('kernel_ms_per_step', '.1f')} | {cell('gpu_busy', '.0%')} | "
                f"{cell('kernels_per_step', '.0f')} | {cell('launches_per_step', '.0f')} "
                f"| {cell('host_waits_per_step', '.1f')} | "
                f"{cell('sync_ops_per_step', '.2f')} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", default=["paper", "small"], choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument(
        "--warmup", type=int, default=4, help="steps before timing (a graph is captured after 3)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument(
        "--check-steps", type=int, default=4, help="steps of the graph-against-eager check"
    )
    parser.add_argument("--out", default=None, help="JSON file")
    args = parser.parse_args(argv)
    keep_freed_memory()
    device = torch.device(args.device)
    results = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "args": vars(args),
        "presets": {},
    }
    for name in args.presets:
        results["presets"][name] = run_preset(name, device, args)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(table(results))
    for name, result in results["presets"].items():
        check, extra = result["graph_matches_eager"], result["periodic"]
        print(f"{name}: graph against eager: {json.dumps(check)}")
        print(
            f"{name}: evaluation {extra['eval_s']:.3f} s, checkpoint holds the loop "
            f"{extra['checkpoint_held_s']:.3f} s (+{extra['steps_during_write_extra_s']:.3f} s "
            f"of slower steps while written, {extra['checkpoint_mb']:.0f} MB): "
            f"{extra['share_of_a_step']:.2%} of a step at every {extra['eval_every']}/"
            f"{extra['checkpoint_every']}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
