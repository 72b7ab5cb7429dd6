"""The training loop: data order, noise, checkpoints, resume, the non-finite guard, DDP.

Every random choice is a pure function of (seed, iteration): the images of a global batch, their
dequantisation noise and the sample grids. A run resumed from a checkpoint therefore replays
exactly what an uninterrupted run would have done, and under torchrun every rank takes its slice
of the same global batch, so N processes compute what one process would with that batch.

The steps do not wait for the device (step.py): the loop queues them, and reads what they did
every `log_every` iterations and before every evaluation, sample and checkpoint. A skipped step
uses up its batch; the guard's rollback happens at the read after its run of bad steps.
"""

import contextlib
import json
import math
import os
import time
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import nn

from ..atomic import WriteError, append_line, write_json
from ..data.datasets import dataset_of, masked_images_of
from ..errors import UserError
from ..flow.model import Glow
from ..flow.preprocess import bits_per_dim, from_model, match_channels, quantize
from ..progress import echo, progress_bar
from ..render.images import grid, save_png
from ..seeding import generator
from . import checkpoint as ckpt
from .adam import GuardedAdam
from .allocator import keep_freed_memory
from .config import TrainConfig
from .fills import Fills
from .heldout import HeldoutEval
from .runlock import RunLock
from .saver import CheckpointWriter
from .step import Feed, Stepper, TrainStep
from .threads import Threads

METRICS = "metrics.jsonl"


def model_config(config):
    """Glow keyword arguments from a training config."""
    out = dict(
        blocks=config.blocks,
        flows=config.flows,
        hidden=config.hidden,
        affine=config.affine,
        lu=config.lu,
        image_size=config.image_size,
        in_channels=config.channels or 3,
    )
    if config.impl is not None:
        out["impl"] = config.impl
    out["memory_saving"] = config.memory_saving
    if config.precision != "fp32":  # a full-precision run's checkpoint stays as it was
        out["precision"] = config.precision
    return out


class LogProb(nn.Module):
    """Wraps a Glow so that DistributedDataParallel sees a forward that returns log p(x)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.log_prob(x)


class BatchOrder:
    """Global batch t = positions t·B … t·B+B−1 of an endless sequence of seeded epoch
    permutations."""

    def __init__(self, n, batch, seed):
        self.n, self.batch, self.seed, self._perms = n, batch, seed, {}

    def _perm(self, epoch):
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            order = generator(self.seed, "epoch", epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=order).tolist()
        return self._perms[epoch]

    def __call__(self, iteration):
        start = iteration * self.batch
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + self.batch)]


class Distributed:
    """Rank, world size and device; a no-op when not launched by torchrun."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def all_finite(self, flag):
        """True only if every rank's flag is True. A bool tensor on the device stays there, read
        by nobody (the training step's verdict); a bool is answered with a bool."""
        if self.world == 1:
            return flag
        t = torch.as_tensor(flag, dtype=torch.float32, device=self.device).reshape(1).clone()
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t[0] == 1.0 if isinstance(flag, torch.Tensor) else bool(t.item() == 1.0)

    def graph(self, wanted, speak, why_not=None):
        """Whether the training step runs as a CUDA graph: on one GPU when `wanted` and nothing
        (`why_not`) reads the device inside the step."""
        if not wanted or self.device.type != "cuda":
            return False
        if self.world > 1 or why_not:
            speak(
                f"{why_not or 'under torchrun'} the training steps run eagerly, not as a CUDA graph"
            )
            return False
        return True

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class Batches:
    """Global batch t of the training images, with its seeded dequantisation noise, in host memory.

    `batch(t)` is this rank's slice; `whole(t)` the whole global batch (ActNorm's initialisation).
    With `fills` (train --complete) the holes hold the current fills instead of grey.
    """

    def __init__(self, images, config, env, fills=None):
        self.images, self.config, self.fills = images, config, fills
        self.order = BatchOrder(len(images), config.batch, config.seed)
        self.local = config.batch // env.world
        self.part = slice(env.rank * self.local, (env.rank + 1) * self.local)

    def whole(self, iteration):
        return self.batch(iteration, slice(None))

    def batch(self, iteration, part=None):
        c, part = self.config, self.part if part is None else part
        shape = (c.batch, c.channels, c.image_size, c.image_size)
        noise = torch.rand(shape, generator=generator(c.seed, "noise", iteration))
        js = self.order(iteration)[part]
        masked = self.fills.batch(js) if self.fills is not None else self.images.batch(js)[0]
        x = quantize(match_channels(masked, c.channels), c.n_bits)
        return x + noise[part] / 2**c.n_bits


class Metrics:
    """metrics.jsonl, appended by rank 0 only; `speed` turns iterations into images per second."""

    def __init__(self, run_dir, main):
        self.path, self.main = os.path.join(run_dir, METRICS), main
        self.since, self.since_time, self.bpd_sum, self.bpd_count = 0, time.perf_counter(), 0.0, 0

    def append(self, record):
        if self.main:
            append_line(self.path, json.dumps(dict(record, time=time.time())))

    def add_losses(self, total, count):
        """`count` steps' bits/dim, summed to `total`."""
        self.bpd_sum, self.bpd_count = self.bpd_sum + total, self.bpd_count + count

    @property
    def mean_bpd(self):
        return self.bpd_sum / max(self.bpd_count, 1)

    def log_step(self, iteration, batch, **record):
        now = time.perf_counter()
        steps, seconds = max(iteration - self.since, 1), max(now - self.since_time, 1e-9)
        self.append(
            {
                "iter": iteration,
                "bpd": self.mean_bpd,
                **record,
                "images_per_s": (iteration - self.since) * batch / seconds,
                "s_per_iter": seconds / steps,
            }
        )
        self.since, self.since_time, self.bpd_sum, self.bpd_count = iteration, now, 0.0, 0


@torch.no_grad()
def sample_grid(model, config, path, n=32, columns=8):
    """A grid of n samples at the configured temperature (fixed seed); returns how many were
    non-finite."""
    images = model.sample(n, config.temperature, generator=generator(config.seed, "samples"))
    images = from_model(images.cpu(), config.n_bits)  # non-finite ones stay NaN, to be counted
    rows = [images[i : i + columns] for i in range(0, n, columns)]
    canvas, bad = grid(rows)
    save_png(canvas, path)
    return bad


def set_lr(optimizer, config, iteration, lr_scale):
    warm = min(1.0, (iteration + 1) / config.warmup) if config.warmup else 1.0
    lr = config.lr * lr_scale * warm
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def new_run_dir(config):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return config.out or os.path.join("runs", f"{config.preset}-{stamp}")


def open_run(config, resume, iterations, speak, hold=None, machine=None):
    """(config, run folder, checkpoint payload or None) for a new run or a resumed one, with
    `iterations` (when given) as its total and `machine` ({setting: value} of this machine's
    settings, TrainConfig.machine_names) replacing the stored ones. `hold`: an ExitStack that
    takes the run folder's lock, for the process that writes the run."""
    if (config is None) == (resume is None):
        raise TypeError("train() takes a TrainConfig for a new run or a run to resume, not both")
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(
            f"train() takes a TrainConfig (training/config.py), not {type(config).__name__}"
        )
    run_dir = (
        new_run_dir(config)
        if resume is None
        else (resume if os.path.isdir(resume) else os.path.dirname(os.path.dirname(resume)))
    )
    if hold is not None:
        hold.enter_context(RunLock(run_dir))
        remove_temp_files(run_dir)
    if resume is None:
        if os.path.exists(os.path.join(run_dir, ckpt.LATEST)):
            raise UserError(
                f"run folder {run_dir} already holds a run; pass --resume "
                f"{run_dir} to continue it, or another --out"
            )
        config = replace(config, out=run_dir, **(machine or {}))
        return (
            config if iterations is None else replace(config, iterations=iterations),
            run_dir,
            None,
        )
    payload = ckpt.load_checkpoint(resume)
    stored = payload["config"]
    unknown = TrainConfig.unknown(stored)
    if unknown:
        speak(
            f"{run_dir} was trained with settings this missingglow does not know "
            f"({', '.join(unknown)}); going on without them"
        )
    config = replace(TrainConfig.from_dict(stored), out=run_dir, **(machine or {}))
    if iterations is not None:
        config = replace(config, iterations=iterations)
    if payload["iteration"] >= config.iterations:
        speak(
            f"{run_dir} has finished its {config.iterations:,} iterations; pass "
            "--iterations N (more) to train it further"
        )
    else:
        speak(f"resuming {run_dir} at iteration {payload['iteration']:,} of {config.iterations:,}")
    return config, run_dir, payload


def open_images(config, env, progress, speak):
    """(config, training images, held-out images); rank 0 builds the cache if needed, the others
    wait.

    A new run on a dataset whose every image is grey trains a one-channel model (the config's
    `channels` says which): three equal channels would put the data on a subspace, where a flow's
    density has no bound."""
    if env.main:  # a --masks run's hole cache is built here, once, before the others read it
        cache = dataset_of(config.to_dict(), quiet=not progress)
        train_images = masked_images_of(config.to_dict(), cache, "train")
    env.barrier()
    if not env.main:
        cache = dataset_of(config.to_dict())
        train_images = masked_images_of(config.to_dict(), cache, "train")
    if config.channels is None:
        config = replace(config, channels=1 if cache.grayscale else 3)
        if cache.grayscale:
            speak(f"every image of {cache.source} is grayscale: training a one-channel model")
    if config.batch % env.world:
        raise UserError(f"batch {config.batch} does not split evenly over {env.world} processes")
    heldout = masked_images_of(config.to_dict(), cache, "heldout", holes=train_images.holes)
    return config, train_images, heldout


def train(config=None, resume=None, progress=True, say=None, iterations=None, machine=None):
    """Train a new run from `config` (a TrainConfig), or resume the run folder (or checkpoint
    file) `resume` with its stored config; `iterations`, when given, is the run's total (a resumed
    run is extended to it), and `machine` ({setting: value}) sets this machine's settings (threads,
    graph, eval_batch) over the stored ones. Returns the run folder."""
    keep_freed_memory()
    env = Distributed()
    say = say or echo
    speak = say if env.main else (lambda msg: None)
    with contextlib.ExitStack() as hold:  # the process group, the run folder's lock, the bar
        hold.callback(env.close)

        # the run folder, locked by the writing process; a resumed run brings its config
        config, run_dir, payload = open_run(
            config, resume, iterations, speak, hold if env.main else None, machine
        )
        hold.enter_context(name_the_last_checkpoint(run_dir))
        threads = Threads(config.threads, env.device, speak)

        # the images, and global batch t with its noise as a pure function of (seed, t)
        torch.manual_seed(config.seed)
        config, train_images, heldout = open_images(config, env, progress, speak)
        bits, dims = config.n_bits, config.channels * config.image_size**2

        # with --complete the holes are missing values: a smooth fill at first, re-fitted from
        # the model every refill_every iterations (fills.py); else the images as they are
        fills = (
            Fills(train_images, config.channels, bits, config.eval_batch, start=payload is None)
            if config.complete
            else None
        )
        batches = Batches(train_images, config, env, fills)

        # the model and optimiser: new, with ActNorm initialised on the whole first global batch,
        # or as the checkpoint left them
        model = Glow(**model_config(config)).to(env.device)
        optimizer = GuardedAdam(model.parameters(), config.lr, env.device)
        state = {"lr_scale": 1.0, "skipped": 0, "rollbacks": 0}
        if payload is None:
            with torch.no_grad():
                model.log_prob(batches.whole(0).to(env.device))
            start = 0
        else:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            state.update(payload["state"])
            start = payload["iteration"]
            if fills is not None:
                fills.load_state_dict(payload["fills"], run_dir)
        net = LogProb(model)
        if env.world > 1:
            net = nn.parallel.DistributedDataParallel(net)

        # checkpoints: the state copied to host memory and written in the background by rank 0
        writer = CheckpointWriter(run_dir)
        hold.callback(writer.close)

        def save(iteration):
            if env.main:
                writer.save(
                    {
                        "config": config.to_dict(),
                        "model_config": model_config(config),
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "iteration": iteration,
                        "state": dict(state),
                        "rng": {"torch": torch.get_rng_state()},
                        **({"fills": fills.state_dict()} if fills is not None else {}),
                    }
                )
            env.barrier()

        # the run's files: config.json, the metrics log, and a checkpoint of iteration 0 (a
        # rollback target from the start)
        metrics = Metrics(run_dir, env.main)
        metrics.since = start
        if env.main:
            os.makedirs(run_dir, exist_ok=True)
            write_json(os.path.join(run_dir, "config.json"), config.to_dict())
            metrics.append(
                {"event": "start", "config": config.to_dict()}
                if payload is None
                else {"event": "resume", "iter": start}
            )
        if payload is None:
            if fills is not None:
                metrics.append({"event": "fills", "iter": 0, "fill_rmse": fills.error()})
            save(0)

        # the step: a static input fed from host memory, the guard and the sums on the device,
        # one CUDA graph where it can be; the held-out images prepared once, on rank 0
        def loss_of(x):
            return bits_per_dim(net(x), bits, dims).mean()

        params = [p for p in model.parameters() if p.requires_grad]
        clip = config.grad_clip if config.grad_clip else math.inf
        shape = (batches.local, config.channels, config.image_size, config.image_size)
        step = TrainStep(loss_of, params, optimizer, shape, env.device, clip, env)
        feed = Feed(batches, step.x)
        why_not = (
            "with the reference flow (its ActNorm reads a flag every call)"
            if model.config["impl"] == "reference"
            else "with memory saving (its inverses check for errors on the host)"
            if config.memory_saving
            else None
        )
        stepper = Stepper(step, env.graph(config.graph, speak, why_not), speak)
        evaluate = (
            HeldoutEval(
                heldout,
                bits,
                config.seed,
                config.heldout_images,
                config.eval_batch,
                env.device,
                model.in_channels,
            )
            if env.main
            else None
        )

        # the loop; Ctrl-C saves a checkpoint where it stopped
        iteration = read_at = start
        bar = hold.enter_context(
            progress_bar(
                config.iterations,
                "training",
                env.main and progress,
                start,
                show_pos=True,
                item_show_func=lambda s: s,
            )
        )
        try:
            # a refill due at the checkpoint resumed from but not made (the run was stopped
            # during it, or ended there before --iterations extended it) comes first
            if fills is not None and start < config.iterations:
                if fills.refills < start // config.refill_every:
                    refill(fills, model, env, config, start, bar, speak, metrics)
            while iteration < config.iterations:
                # one step on this rank's slice of global batch `iteration`, queued on the device
                lr = set_lr(optimizer, config, iteration, state["lr_scale"])
                feed(iteration)
                stepper()
                iteration += 1
                done = iteration == config.iterations
                due = {
                    name: iteration % every == 0 or done
                    for name, every in (
                        ("log", config.log_every),
                        ("eval", config.eval_every),
                        ("sample", config.sample_every),
                        ("checkpoint", config.checkpoint_every),
                    )
                }
                due["refill"] = (
                    fills is not None and iteration % config.refill_every == 0 and not done
                )
                if not any(due.values()):
                    continue

                # the lagged read of the steps since the last one; the guard: max_bad_steps
                # non-finite steps in a row (on any rank) roll back to the last checkpoint with
                # the learning rate halved, dropping the steps queued since
                writer.check()
                threads.update()
                sums = step.log.read(read_at)
                steps_read, read_at = iteration - read_at, iteration
                account(sums, state, metrics, speak)
                if sums["worst"] >= config.max_bad_steps:
                    writer.wait()
                    iteration = read_at = roll_back(
                        run_dir, model, optimizer, state, speak, env, metrics, fills
                    )
                    step.log.clear()
                    stepper.reset()
                    if bar is not None:
                        bar.pos = iteration
                    continue
                if bar is not None:
                    bar.update(steps_read, f"bpd {metrics.mean_bpd:.3f}")

                # --complete: re-fit every hole from the model as it is now
                if due["refill"]:
                    refill(fills, model, env, config, iteration, bar, speak, metrics)

                # log, evaluate on held-out images, sample, checkpoint
                if due["log"]:
                    metrics.log_step(
                        iteration,
                        config.batch,
                        lr=lr,
                        grad_norm=sums["grad_norm"],
                        skipped=state["skipped"],
                    )
                if env.main and due["eval"]:
                    model.eval()
                    result = evaluate(model)
                    model.train()
                    metrics.append(
                        {
                            "iter": iteration,
                            "heldout_bpd_masked": result["masked"],
                            "heldout_bpd_clean": result["clean"],
                            "gap": result["gap"],
                        }
                    )
                if env.main and due["sample"]:
                    path = os.path.join(run_dir, "samples", f"iter_{iteration:08d}.png")
                    bad = sample_grid(model, config, path)
                    metrics.append({"iter": iteration, "samples": path, "nonfinite_samples": bad})
                if due["checkpoint"]:
                    save(iteration)
        except KeyboardInterrupt:
            account(step.log.read(read_at), state, metrics, speak)
            writer.close()
            save(iteration)
            writer.wait()
            speak(
                f"interrupted: checkpoint at iteration {iteration:,} in {run_dir}; "
                f"continue with --resume {run_dir}"
            )
            raise
        writer.wait()
        return run_dir


def account(sums, state, metrics, speak):
    """Add a read's losses to the metrics and its non-finite steps to the count, saying so."""
    metrics.add_losses(sums["loss_sum"], sums["good"])
    if not sums["bad"]:
        return
    state["skipped"] += sums["bad"]
    if sums["bad"] == 1:
        speak(
            f"iteration {sums['last_bad']}: non-finite loss or gradient, step skipped "
            f"({sums['run_at_last']} in a row, {state['skipped']} in all)"
        )
    else:
        speak(
            f"iterations {sums['first_bad']}–{sums['last_bad']}: {sums['bad']} non-finite "
            f"losses or gradients, steps skipped (at most {sums['worst']} in a row, "
            f"{state['skipped']} in all)"
        )


def remove_temp_files(run_dir):
    """Delete the temp files of writes cut short by a killed process (atomic.py names them
    `.tmp-…`); safe only while holding the run's lock, when no other process writes there."""
    for folder in (run_dir, os.path.join(run_dir, ckpt.FOLDER), os.path.join(run_dir, "samples")):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, name))


@contextlib.contextmanager
def name_the_last_checkpoint(run_dir):
    """A write that fails (a full disk, no permission) says which checkpoint is still good and how
    to go on from it: nothing written before is lost, and no temp file is left."""
    try:
        yield
    except WriteError as err:
        try:
            last = ckpt.resolve(run_dir)
        except UserError:
            last = None
        fix = "free some space (or fix the folder's permissions)"
        if last is None:
            then = f"no checkpoint was written yet: {fix} and start the run again"
        else:
            then = (
                f"the last good checkpoint, {last}, is intact: {fix} and continue with "
                f"`missingglow train --resume {run_dir}`"
            )
        raise UserError(f"cannot write {err.path} ({err.reason}); {then}") from None


def refill(fills, model, env, config, iteration, bar, speak, metrics):
    """Re-fit the training images' holes from the model, the chunks split over the processes,
    and give every process the same fills; the progress bar's label counts the images (this
    process's share times the processes)."""
    n, done = len(fills.values), 0

    def show(count):
        nonlocal done
        done = min(n, done + count * env.world)
        if bar is not None:
            bar.update(0, f"re-filling holes {done:,}/{n:,}")

    def share(values, owners, totals):
        for (first, end), owner in zip(fills.chunk_rows(), owners, strict=True):
            rows = values[first:end].to(env.device)
            dist.broadcast(rows, owner)
            values[first:end] = rows.cpu()
        summed = totals.to(env.device)
        dist.all_reduce(summed)
        totals.copy_(summed.cpu())

    result = fills.refill(
        model,
        env.device,
        config.refill_steps,
        show,
        rank=env.rank,
        world=env.world,
        share=share if env.world > 1 else None,
    )
    if not env.main:
        return
    speak(
        f"iteration {iteration:,}: re-filled the holes of {n:,} training images from the model "
        f"({config.refill_steps} inversion steps, {result['seconds']:.0f} s; "
        f"{result['kept']:.0%} of the fills improved, mean change {result['changed']:.3f}"
        + (
            f", RMSE to the clean pixels {result['fill_rmse']:.3f})"
            if result["fill_rmse"] is not None
            else ")"
        )
    )
    metrics.append({"event": "refill", "iter": iteration, **result})


def roll_back(run_dir, model, optimizer, state, speak, env, metrics, fills=None):
    """Reload the last checkpoint (and its fills) and halve the learning rate; returns its
    iteration."""
    env.barrier()
    payload = ckpt.load_checkpoint(run_dir)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if fills is not None:
        fills.load_state_dict(payload["fills"], run_dir)
    state["lr_scale"] *= 0.5
    state["rollbacks"] += 1
    speak(
        f"too many non-finite steps in a row: rolled back to iteration "
        f"{payload['iteration']:,} with the learning rate halved (×{state['lr_scale']:g})"
    )
    metrics.append(
        {"event": "rollback", "iter": payload["iteration"], "lr_scale": state["lr_scale"]}
    )
    metrics.since, metrics.since_time = payload["iteration"], time.perf_counter()
    return payload["iteration"]
