"""What the training loop promises beyond resuming exactly: it learns (held-out bits/dim falls),
Ctrl-C saves and exits 130, three checkpoints are kept, the warm-up and the gradient clipping have
the values configured, the process group splits batches evenly, agrees on non-finite steps and
lets rank 0 build the cache first, resuming works from a file and says when a run is finished;
every setting `validate()` checks is refused with a message, and the `train` command's options,
their help and the ranges click checks come from TrainConfig alone."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace

import pytest
import torch

from missingglow.errors import UserError
from missingglow.training import checkpoint as ckpt
from missingglow.training import loop as train_module
from missingglow.training.config import PRESETS, TrainConfig, validate
from missingglow.training.loop import open_images, set_lr, train

from helpers import TINY, TINY_CLI, run_in_process, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py


config = tiny_config


def logged(run, key):
    import json

    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [(r["iter"], r[key]) for r in map(json.loads, f) if key in r]


def test_training_lowers_heldout_bits_per_dim(tmp_path):
    run = train(
        config(
            tmp_path,
            "learn",
            iterations=300,
            eval_every=100,
            synthetic_count=200,
            heldout_images=16,
            checkpoint_every=1000,
            log_every=100,
            lr=3e-3,
            warmup=20,
        ),
        progress=False,
    )
    clean = [bpd for _, bpd in logged(run, "heldout_bpd_clean")]
    assert len(clean) == 3 and clean[0] > clean[1] > clean[2], clean
    assert clean[0] - clean[2] > 0.1, clean  # it falls by about 0.15 in these 300 steps


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    run = str(tmp_path / "stopped")
    args = [
        "train",
        *TINY_CLI,
        "--eval-every",
        "100000",
        "--sample-every",
        "100000",
        "--checkpoint-every",
        "100000",
        "--iterations",
        "100000",
        "--out",
        run,
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "missingglow", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job ignores Ctrl-C, and children inherit that: hear it again
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and not os.path.exists(os.path.join(run, "metrics.jsonl"))
        or len(logged(run, "bpd")) < 3
    ):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    iteration = ckpt.load_checkpoint(run)["iteration"]
    assert iteration >= 3  # saved where it stopped, not only the checkpoint of iteration 0
    assert f"interrupted: checkpoint at iteration {iteration:,} in {run}" in err


def test_the_newest_three_checkpoints_are_kept(tmp_path):
    for i in (5, 1, 10, 3, 7):
        ckpt.save_checkpoint(str(tmp_path), {"iteration": i})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "ckpt-00000005.pt",
        "ckpt-00000007.pt",
        "ckpt-00000010.pt",
    ]
    assert ckpt.load_checkpoint(str(tmp_path))["iteration"] == 7  # `latest`: the last written


class _Opt:
    def __init__(self):
        self.param_groups = [{}, {}]


def test_warmup_is_linear_then_constant_and_scaled():
    c = TrainConfig(lr=1e-3, warmup=4)
    opt = _Opt()
    assert [set_lr(opt, c, i, 1.0) for i in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    assert set_lr(opt, c, 10, 0.25) == pytest.approx(2.5e-4)
    assert all(g["lr"] == pytest.approx(2.5e-4) for g in opt.param_groups)
    assert set_lr(opt, TrainConfig(lr=1e-3, warmup=0), 0, 1.0) == pytest.approx(1e-3)


def test_gradients_are_clipped_to_the_configured_norm(tmp_path, monkeypatch):
    norms = []
    real_step = train_module.GuardedAdam.step  # the loop's Adam (training/adam.py)

    def step(self, *args, **kwargs):
        grads = [
            p.grad.flatten() for g in self.param_groups for p in g["params"] if p.grad is not None
        ]
        norms.append(torch.cat(grads).norm().item())
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(train_module.GuardedAdam, "step", step)
    run = train(config(tmp_path, "clip", iterations=3, grad_clip=0.01), progress=False)
    logged_norms = [n for _, n in logged(run, "grad_norm")]
    assert len(norms) == 3 and max(norms) <= 0.01 * (1 + 1e-4), norms
    assert min(logged_norms) > 0.01  # the log shows the norm before clipping
    norms.clear()
    train(config(tmp_path, "free", iterations=3, grad_clip=0), progress=False)
    assert max(norms) > 0.01  # 0 turns clipping off


class FakeGroup:
    """A process group of `world` ranks, seen from `rank`, recording the order of events."""

    def __init__(self, rank, world, events):
        self.rank, self.world, self.events, self.device = rank, world, events, "cpu"

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        self.events.append("barrier")


def test_rank_zero_builds_the_cache_while_the_others_wait(tmp_path, monkeypatch):
    c = config(tmp_path, "ranks")
    events = []
    real = train_module.dataset_of
    monkeypatch.setattr(
        train_module, "dataset_of", lambda *a, **k: events.append("cache") or real(*a, **k)
    )
    open_images(c, FakeGroup(0, 2, events), False, print)
    assert events == ["cache", "barrier"]
    events.clear()
    open_images(c, FakeGroup(1, 2, events), False, print)
    assert events == ["barrier", "cache"]


def test_a_batch_must_split_evenly_over_the_processes(tmp_path):
    with pytest.raises(UserError, match="batch 8 does not split evenly over 3 processes"):
        open_images(config(tmp_path, "odd"), FakeGroup(0, 3, []), False, print)


def _guard(rank, world, port, flags, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    env = train_module.Distributed()
    try:
        # a bool is answered with a bool; the training step's tensor stays a tensor
        out[rank] = [env.all_finite(flag) for flag in flags[rank]] + [
            bool(env.all_finite(torch.tensor(flag))) for flag in flags[rank]
        ]
    finally:
        env.close()


def test_the_non_finite_guard_agrees_across_ranks():
    """A step is skipped on every rank when any rank saw a non-finite loss or gradient."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = {0: [True, True, False, True], 1: [True, False, True, True]}
    ctx = torch.multiprocessing.get_context("fork")
    out = ctx.Manager().dict()
    procs = [ctx.Process(target=_guard, args=(r, 2, port, flags, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert out[0] == out[1] == [True, False, False, True] * 2


def test_resume_from_a_checkpoint_file_and_of_a_finished_run(tmp_path):
    said = []
    run = train(config(tmp_path, "files", iterations=3), progress=False)
    first = os.path.join(run, "checkpoints", "ckpt-00000003.pt")
    train(resume=first, iterations=6, progress=False)
    assert ckpt.load_checkpoint(run)["iteration"] == 6
    train(None, resume=run, progress=False, say=said.append)
    assert ckpt.load_checkpoint(run)["iteration"] == 6
    assert any("has finished its 6 iterations" in line for line in said), said


def test_train_takes_a_config_or_a_run_to_resume(tmp_path):
    with pytest.raises(TypeError, match="not both"):
        train(progress=False)
    with pytest.raises(TypeError, match="not both"):
        train(config(tmp_path, "both"), resume=str(tmp_path / "both"), progress=False)
    with pytest.raises(TypeError, match="takes a TrainConfig"):
        train(dict(TINY), progress=False)  # the plain dict is a run's stored form only


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("image_size", 10, "divisible by 2\\^blocks"),
        ("image_size", 1, "image_size \\(--size\\) must be at least 2, not 1"),
        ("blocks", 0, "blocks must be at least 1, not 0"),
        ("flows", 0, "flows must be at least 1"),
        ("hidden", 0, "hidden must be at least 1"),
        ("n_bits", 0, "n_bits \\(--bits\\) must be 1 to 8, not 0"),
        ("n_bits", 9, "n_bits \\(--bits\\) must be 1 to 8, not 9"),
        ("batch", 0, "batch must be at least 1, not 0"),
        ("batch", "8", "batch must be int, not '8'"),
        ("batch", True, "batch must be int, not True"),
        ("iterations", -1, "iterations must be at least 0"),
        ("lr", 0.0, "lr must be more than 0"),
        ("lr", float("nan"), "lr must be a finite number"),
        ("square", 9, "does not fit a 8×8 image"),
        ("squares", -1, "squares must be at least 0"),
        ("impl", "fast", "impl must be fused or reference"),
        ("synthetic_detail", "blurry", "synthetic_detail must be full or low"),
        ("channels", 2, "channels must be 1 or 3"),
        ("eval_every", 0, "eval_every must be at least 1"),
        ("affine", None, "affine must be given"),
    ],
)
def test_validate_refuses_each_bad_setting(tmp_path, key, value, message):
    good = config(tmp_path, "v")
    validate(good)
    validate(replace(good, lr=1))  # an int where a float is asked for is fine
    with pytest.raises(UserError, match=message):
        validate(replace(good, **{key: value}))


def train_options():
    from missingglow.cli.train_commands import train as command

    return {p.name: p for p in command.params}


def test_every_setting_has_help_and_is_a_train_option():
    options = train_options()
    for f in fields(TrainConfig):
        assert f.metadata["help"].strip(), f.name
        assert f.name in options, f.name
        assert f.metadata["help"] in options[f.name].help, f.name
        assert options[f.name].default is None, f.name  # not given: the preset decides
    assert set(options) == set(TrainConfig.names()) | {"resume", "quiet"}
    spelled = {
        name: options[name].opts + options[name].secondary_opts
        for name in ("image_size", "n_bits", "affine", "lu", "memory_saving", "impl")
    }
    assert spelled == {
        "image_size": ["--size"],
        "n_bits": ["--bits"],
        "affine": ["--affine", "--additive"],
        "lu": ["--lu", "--no-lu"],
        "memory_saving": ["--memory-saving"],
        "impl": ["--impl"],
    }


def test_train_help_shows_the_defaults_of_the_dataclass_and_presets(monkeypatch):
    from missingglow.cli import train_commands

    done = run_in_process(["train", "--help"])
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # click wraps the help
    small, paper = PRESETS["small"], TrainConfig()
    assert f"[small: {small['iterations']}, paper: {paper.iterations}]" in text
    assert f"[small: {small['batch']}, paper: {paper.batch}]" in text
    assert f"Gradient-norm clip (0: none). [{paper.grad_clip:g}]" in text
    assert "Coupling type. [affine]" in text and "[off]" in text
    # one place: change a preset and the help follows, with nothing else to edit
    monkeypatch.setitem(PRESETS, "small", dict(small, iterations=1234, grad_clip=7.0))
    option = train_commands.setting_option(
        next(f for f in fields(TrainConfig) if f.name == "iterations")
    )
    rebuilt = option(lambda **kw: None).__click_params__[0]
    assert rebuilt.help.endswith(f"[small: 1234, paper: {paper.iterations}]")
    clip = train_commands.setting_option(
        next(f for f in fields(TrainConfig) if f.name == "grad_clip")
    )
    assert clip(lambda **kw: None).__click_params__[0].help.endswith("[small: 7, paper: 50]")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch", "0"], "Invalid value for '--batch': 0 is not in the range x>=1"),
        (["--bits", "9"], "Invalid value for '--bits': 9 is not in the range 1<=x<=8"),
        (["--lr", "0"], "Invalid value for '--lr'"),
        (["--channels", "2"], "Invalid value for '--channels'"),
        (["--synthetic-detail", "blurry"], "Invalid value for '--synthetic-detail'"),
        (["--eval-every", "0"], "Invalid value for '--eval-every'"),
    ],
)
def test_a_bad_value_is_refused_by_click(tmp_path, args, message):
    done = run_in_process(
        ["train", *args, "--out", tmp_path / "run"], env={"MISSINGGLOW_CACHE": tmp_path / "c"}
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_values_click_lets_through_are_refused_in_one_line(tmp_path):
    for args, message in (
        (["--lr", "nan"], "error: lr must be a finite number"),
        (["--size", "10"], "error: image size 10 must be divisible by 2^blocks"),
        (["--resume", tmp_path, "--lr", "1"], "only --iterations applies, not --lr"),
    ):
        done = run_in_process(["train", *args], env={"MISSINGGLOW_CACHE": tmp_path / "c"})
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_channels_given_on_the_command_line_is_an_int(tmp_path):
    from missingglow.cli.train_commands import train as command

    context = command.make_context("train", ["--channels", "3", "--size", "8"])
    assert context.params["channels"] == 3 and context.params["image_size"] == 8
