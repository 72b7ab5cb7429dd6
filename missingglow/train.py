"""The training loop: data order, noise, checkpoints, resume, the non-finite guard, DDP.

Every random choice is a pure function of (seed, iteration): the images of a global batch, their
dequantisation noise and the sample grids. A run resumed from a checkpoint therefore replays
exactly what an uninterrupted run would have done, and under torchrun every rank takes its slice
of the same global batch, so N processes compute what one process would with that batch.
"""
import json
import math
import os
import time

import click
import torch
import torch.distributed as dist
from torch import nn

from . import checkpoint as ckpt
from .allocator import keep_freed_memory
from .data.datasets import MaskedImages, dataset_of
from .errors import UserError
from .data.images import grid, save_png
from .flow.model import Glow
from .flow.preprocess import bits_per_dim, from_model, quantize
from .seeding import generator

METRICS = "metrics.jsonl"


def model_config(config):
    """Glow keyword arguments from a training config."""
    out = {k: config[k] for k in ("blocks", "flows", "hidden", "affine", "lu", "image_size")}
    for key in ("impl", "memory_saving"):  # options of the fused path, when this Glow has them
        if key in Glow.__init__.__code__.co_varnames and config.get(key) is not None:
            out[key] = config[key]
    return out


class LogProb(nn.Module):
    """Wraps a Glow so that DistributedDataParallel sees a forward that returns log p(x)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.log_prob(x)


class BatchOrder:
    """Global batch t = positions t·B … t·B+B−1 of an endless sequence of seeded epoch permutations."""

    def __init__(self, n, batch, seed):
        self.n, self.batch, self.seed, self._perms = n, batch, seed, {}

    def _perm(self, epoch):
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=generator(self.seed, "epoch", epoch))
        return self._perms[epoch]

    def __call__(self, iteration):
        start = iteration * self.batch
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.batch)]


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
        """True only if every rank's flag is True."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() == 1.0)

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _append_metrics(run_dir, record):
    with open(os.path.join(run_dir, METRICS), "a") as f:
        f.write(json.dumps(record) + "\n")


def _write_json(path, data):
    ckpt.atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


@torch.no_grad()
def heldout_bits_per_dim(model, heldout, config, device, limit=None):
    """Mean bits/dim of held-out images with their squares and of their clean originals.

    The dequantisation noise is fixed, so successive evaluations differ only by the model. A model
    that has learned squares finds the grey pixels cheap, so the gap (masked − clean) shrinks or
    turns negative; a model that has not pays extra for the square's sharp edges.
    """
    n = len(heldout) if limit is None else min(limit, len(heldout))
    bits, dims = config["n_bits"], 3 * config["image_size"] ** 2
    noise_gen = generator(config["seed"], "eval-noise")
    totals = {"masked": 0.0, "clean": 0.0}
    step = max(config["batch"], 1)
    for start in range(0, n, step):
        masked, clean, _ = heldout.batch(list(range(start, min(start + step, n))))
        noise = torch.rand(masked.shape, generator=noise_gen) / 2 ** bits
        for key, images in (("masked", masked), ("clean", clean)):
            x = (quantize(images, bits) + noise).to(device)
            totals[key] += bits_per_dim(model.log_prob(x), bits, dims).sum().item()
    out = {k: v / n for k, v in totals.items()}
    out["gap"] = out["masked"] - out["clean"]
    return out


@torch.no_grad()
def sample_grid(model, config, path, n=32, columns=8):
    """A grid of n samples at the configured temperature (fixed seed); returns the non-finite count."""
    images = model.sample(n, config["temperature"], generator=generator(config["seed"], "samples"))
    images = from_model(images.cpu(), config["n_bits"])  # non-finite samples stay NaN, to be counted
    rows = [images[i:i + columns] for i in range(0, n, columns)]
    canvas, bad = grid(rows)
    save_png(canvas, path)
    return bad


def _set_lr(optimizer, config, iteration, lr_scale):
    warm = min(1.0, (iteration + 1) / config["warmup"]) if config["warmup"] else 1.0
    lr = config["lr"] * lr_scale * warm
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def new_run_dir(config):
    out = config.get("out") or os.path.join("runs", f"{config['preset']}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(os.path.join(out, ckpt.LATEST)):
        raise UserError(f"run folder {out} already holds a run; pass --resume {out} to continue "
                        "it, or another --out")
    return out


def train(config=None, resume=None, progress=True, say=None, inject_nonfinite=()):
    """Train (or resume) a run; returns the run folder. `inject_nonfinite`: iterations whose loss
    is made NaN once each (a replay after a rollback is clean), to test the guard."""
    inject_nonfinite = set(inject_nonfinite)
    keep_freed_memory()  # no page faults re-growing the heap every step (allocator.py)
    env = Distributed()
    say = say or (lambda msg: click.echo(msg, err=True))
    speak = say if env.main else (lambda msg: None)
    payload = None
    if resume is not None:
        payload = ckpt.load_checkpoint(resume)
        run_dir = resume if os.path.isdir(resume) else os.path.dirname(os.path.dirname(resume))
        extend = (config or {}).get("iterations")
        config = dict(payload["config"])
        if extend is not None:
            config["iterations"] = extend
        speak(f"resuming {run_dir} at iteration {payload['iteration']:,} of {config['iterations']:,}")
    else:
        run_dir = new_run_dir(config)
    config["out"] = run_dir
    torch.manual_seed(config["seed"])

    # rank 0 builds the dataset cache if needed; the others then open the finished file
    if env.main:
        cache = dataset_of(config, quiet=not progress)
    env.barrier()
    if not env.main:
        cache = dataset_of(config)
    train_set = MaskedImages(cache, config["square"], config["squares"], config["seed"], "train")
    heldout = MaskedImages(cache, config["square"], config["squares"], config["seed"], "heldout")
    if config["batch"] % env.world:
        raise UserError(f"batch {config['batch']} does not split evenly over {env.world} processes")
    local = config["batch"] // env.world
    order = BatchOrder(len(train_set), config["batch"], config["seed"])
    bits, dims = config["n_bits"], 3 * config["image_size"] ** 2

    def global_batch(iteration):
        """This rank's slice of global batch `iteration`, preprocessed with its seeded noise."""
        idx = order(iteration)
        noise = torch.rand((config["batch"], 3, config["image_size"], config["image_size"]),
                           generator=generator(config["seed"], "noise", iteration)) / 2 ** bits
        masked, _, _ = train_set.batch(idx[env.rank * local:(env.rank + 1) * local])
        x = quantize(masked, bits) + noise[env.rank * local:(env.rank + 1) * local]
        return x.to(env.device)

    model = Glow(**model_config(config)).to(env.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    state = {"lr_scale": 1.0, "skipped": 0, "rollbacks": 0}
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        state.update(payload["state"])
        start = payload["iteration"]
    else:
        # data-dependent ActNorm init on the whole first global batch, the same on every rank
        idx = order(0)
        masked, _, _ = train_set.batch(idx)
        noise = torch.rand(masked.shape, generator=generator(config["seed"], "noise", 0)) / 2 ** bits
        with torch.no_grad():
            model.log_prob((quantize(masked, bits) + noise).to(env.device))
        start = 0
    net = LogProb(model)
    if env.world > 1:
        net = nn.parallel.DistributedDataParallel(net)

    def save(iteration):
        if env.main:
            ckpt.save_checkpoint(run_dir, {
                "config": config, "model_config": model_config(config),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "iteration": iteration, "state": dict(state),
                "rng": {"torch": torch.get_rng_state()},
            })
        env.barrier()

    if env.main:
        os.makedirs(run_dir, exist_ok=True)
        _write_json(os.path.join(run_dir, "config.json"), config)
        if payload is None:
            _append_metrics(run_dir, {"event": "start", "config": config, "time": time.time()})
        else:
            _append_metrics(run_dir, {"event": "resume", "iter": start, "time": time.time()})
    if payload is None:
        save(0)  # a rollback target from the start

    iteration, bad_run = start, 0
    params = [p for p in model.parameters() if p.requires_grad]
    clip = config["grad_clip"] if config["grad_clip"] else math.inf
    last_log, last_log_time, bpd_sum, bpd_count = start, time.perf_counter(), 0.0, 0
    bar = click.progressbar(length=config["iterations"], label="training", show_pos=True,
                            item_show_func=lambda s: s) if env.main and progress else None
    try:
        if bar is not None:
            bar.__enter__()
            bar.update(start)
        while iteration < config["iterations"]:
            lr = _set_lr(optimizer, config, iteration, state["lr_scale"])
            x = global_batch(iteration)
            log_p = net(x)
            loss = bits_per_dim(log_p, bits, dims).mean()
            if iteration in inject_nonfinite:
                inject_nonfinite.discard(iteration)
                loss = loss * float("nan")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            finite = env.all_finite(bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm)))
            if finite:
                optimizer.step()
                bad_run = 0
                bpd_sum, bpd_count = bpd_sum + loss.item(), bpd_count + 1
            else:
                state["skipped"] += 1
                bad_run += 1
                speak(f"iteration {iteration}: non-finite loss or gradient, step skipped "
                      f"({bad_run} in a row, {state['skipped']} in all)")
                if bad_run >= config["max_bad_steps"]:
                    iteration = _roll_back(run_dir, model, optimizer, state, speak, env)
                    bad_run = 0
                    if bar is not None:
                        bar.pos = iteration
                    continue
            iteration += 1
            if bar is not None and bpd_count:
                bar.update(1, f"bpd {bpd_sum / bpd_count:.3f}")
            if env.main and (iteration % config["log_every"] == 0 or iteration == config["iterations"]):
                now = time.perf_counter()
                images = (iteration - last_log) * config["batch"] / max(now - last_log_time, 1e-9)
                _append_metrics(run_dir, {
                    "iter": iteration, "bpd": bpd_sum / max(bpd_count, 1), "lr": lr,
                    "grad_norm": float(grad_norm), "skipped": state["skipped"],
                    "images_per_s": images, "s_per_iter": (now - last_log_time) / max(iteration - last_log, 1),
                    "time": time.time()})
                last_log, last_log_time, bpd_sum, bpd_count = iteration, now, 0.0, 0
            done = iteration == config["iterations"]
            if env.main and (iteration % config["eval_every"] == 0 or done):
                model.eval()
                result = heldout_bits_per_dim(model, heldout, config, env.device, config["heldout_images"])
                model.train()
                _append_metrics(run_dir, {"iter": iteration, "heldout_bpd_masked": result["masked"],
                                          "heldout_bpd_clean": result["clean"], "gap": result["gap"],
                                          "time": time.time()})
            if env.main and (iteration % config["sample_every"] == 0 or done):
                path = os.path.join(run_dir, "samples", f"iter_{iteration:08d}.png")
                bad = sample_grid(model, config, path)
                _append_metrics(run_dir, {"iter": iteration, "samples": path, "nonfinite_samples": bad})
            if iteration % config["checkpoint_every"] == 0 or done:
                save(iteration)
    except KeyboardInterrupt:
        save(iteration)
        speak(f"interrupted: checkpoint at iteration {iteration:,} in {run_dir}; "
              f"continue with --resume {run_dir}")
        raise
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
        env.close()
    return run_dir


def _roll_back(run_dir, model, optimizer, state, speak, env):
    """Reload the last checkpoint and halve the learning rate; returns its iteration."""
    env.barrier()
    payload = ckpt.load_checkpoint(run_dir)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    state["lr_scale"] *= 0.5
    state["rollbacks"] += 1
    speak(f"too many non-finite steps in a row: rolled back to iteration "
          f"{payload['iteration']:,} with the learning rate halved (×{state['lr_scale']:g})")
    if env.main:
        _append_metrics(run_dir, {"event": "rollback", "iter": payload["iteration"],
                                  "lr_scale": state["lr_scale"], "time": time.time()})
    return payload["iteration"]
