"""Training: resume is exact, the non-finite guard skips and rolls back, checkpoints survive
SIGKILL, and two gloo processes compute what one process does with the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from missingglow.errors import UserError
from missingglow.training import checkpoint as ckpt
from missingglow.training import loop as train_module
from missingglow.training.config import TrainConfig, resolve_config
from missingglow.training.loop import train

from helpers import TINY, TINY_CLI, tiny_config, torchrun_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ARGS = [
    *TINY_CLI,
    "--lr",
    "1e-3",
    "--warmup",
    "2",
    "--eval-every",
    "1000",
    "--sample-every",
    "1000",
]


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py


config = tiny_config


def final_params(run_dir):
    return ckpt.load_checkpoint(run_dir)["model"]


def assert_same_params(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=atol, rtol=0, msg=key)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = train(config(tmp_path, "whole"), progress=False)
    part = train(config(tmp_path, "part", iterations=3), progress=False)
    assert ckpt.load_checkpoint(part)["iteration"] == 3
    train(resume=part, iterations=6, progress=False)
    assert ckpt.load_checkpoint(part)["iteration"] == 6
    assert_same_params(final_params(whole), final_params(part), atol=1e-6)
    # and training moved the parameters at all
    start = torch.load(os.path.join(whole, "checkpoints", "ckpt-00000000.pt"), weights_only=True)[
        "model"
    ]
    moved = final_params(whole)["blocks.0.flows.0.coupling.net.4.conv.weight"]
    assert not torch.equal(start["blocks.0.flows.0.coupling.net.4.conv.weight"], moved)


def nonfinite_losses(monkeypatch, calls):
    """Make the training loss NaN at the given calls (0-based): a replayed step is clean."""
    real, count = train_module.bits_per_dim, iter(range(10**9))

    def loss(*args):
        out = real(*args)
        return out * float("nan") if next(count) in calls else out

    monkeypatch.setattr(train_module, "bits_per_dim", loss)


def test_nonfinite_steps_are_skipped_then_rolled_back(tmp_path, monkeypatch):
    nonfinite_losses(monkeypatch, {4})
    run = train(config(tmp_path, "skip"), progress=False)
    state = ckpt.load_checkpoint(run)["state"]
    assert state["skipped"] == 1 and state["rollbacks"] == 0
    assert all(torch.isfinite(v).all() for v in final_params(run).values() if v.is_floating_point())

    nonfinite_losses(monkeypatch, {4, 5})
    run = train(config(tmp_path, "rollback", max_bad_steps=2), progress=False)
    payload = ckpt.load_checkpoint(run)
    assert payload["iteration"] == 6
    assert payload["state"]["rollbacks"] == 1 and payload["state"]["lr_scale"] == 0.5
    events = [m for m in metrics(run) if m.get("event") == "rollback"]
    assert events and events[0]["iter"] == 3


def test_checkpoints_load_weights_only_and_refuse_mismatches(tmp_path):
    run = train(config(tmp_path, "ckpt", iterations=3), progress=False)
    payload = torch.load(ckpt.resolve(run), weights_only=True)
    assert payload["iteration"] == 3 and payload["config"]["image_size"] == 8
    model, _ = ckpt.load_model(run)
    assert model.config["blocks"] == 2
    wrong = dict(payload["model_config"], hidden=16)
    with pytest.raises(UserError, match="do not fit"):
        ckpt.build_model(wrong, payload["model"])
    newer = dict(payload, version=99)
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(UserError, match="newer"):
        ckpt.load_checkpoint(str(tmp_path / "newer.pt"))
    path = ckpt.resolve(run)
    with open(path, "rb") as f:
        data = f.read()
    with open(tmp_path / "truncated.pt", "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        ckpt.load_checkpoint(str(tmp_path / "truncated.pt"))
    with pytest.raises(UserError, match="already holds a run"):
        train(config(tmp_path, "ckpt"), progress=False)


def test_a_stored_config_round_trips_and_an_old_one_takes_defaults():
    config = resolve_config(dict(TINY, out="run"), has_gpu=False)[0]
    assert TrainConfig.from_dict(config.to_dict()) == config
    old = TrainConfig.from_dict({"batch": 8, "retired_setting": 1})
    assert old.channels == 3  # runs from before grey folders trained one channel were RGB
    assert old.batch == 8 and old.max_bad_steps == TrainConfig().max_bad_steps
    assert TrainConfig.unknown({"batch": 8, "retired_setting": 1}) == ["retired_setting"]


def test_an_old_checkpoint_without_the_newer_settings_resumes(tmp_path):
    """A run written before some settings existed stores no key for them: it resumes with their
    defaults, and a key this version does not know is named and left out."""
    run = train(config(tmp_path, "old", iterations=2, synthetic_detail="full"), progress=False)
    path = ckpt.resolve(run)
    payload = torch.load(path, weights_only=True)
    newer = (
        "channels",
        "synthetic_detail",
        "max_bad_steps",
        "temperature",
        "heldout_images",
        "memory_saving",
        "impl",
        "log_every",
    )
    payload["config"] = {k: v for k, v in payload["config"].items() if k not in newer}
    payload["config"]["retired_setting"] = 1
    torch.save(payload, path)
    said = []
    train(resume=run, iterations=3, progress=False, say=said.append)
    resumed = ckpt.load_checkpoint(run)
    assert resumed["iteration"] == 3 and resumed["model_config"]["in_channels"] == 3
    stored = resumed["config"]
    assert set(stored) == set(TrainConfig.names())  # a full config from now on
    assert stored["max_bad_steps"] == 5 and stored["log_every"] == 50 and stored["batch"] == 8
    assert any("retired_setting" in line for line in said), said


def _cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "missingglow", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_sigkill_at_any_moment_leaves_a_resumable_run(tmp_path):
    run = str(tmp_path / "killed")
    env = dict(os.environ, MISSINGGLOW_CACHE=str(tmp_path / "cache"))
    proc = _cli(
        "train",
        *TINY_ARGS,
        "--iterations",
        "100000",
        "--checkpoint-every",
        "1",
        "--out",
        run,
        "--quiet",
        env=env,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        folder = os.path.join(run, "checkpoints")
        names = os.listdir(folder) if os.path.isdir(folder) else []
        if sum(n.endswith(".pt") for n in names) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    payload = ckpt.load_checkpoint(run)  # whatever moment it died at, `latest` names a whole file
    assert payload["iteration"] >= 1  # ckpt 2 may be written with `latest` still naming ckpt 1
    leftovers = [n for n in os.listdir(os.path.join(run, "checkpoints")) if not n.endswith(".pt")]
    assert all(n.startswith(".tmp-") for n in leftovers)
    open(os.path.join(run, "checkpoints", ".tmp-cut-short"), "wb").close()  # as a kill leaves one
    resumed = _cli(
        "train", "--resume", run, "--iterations", str(payload["iteration"] + 2), "--quiet", env=env
    )
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert ckpt.load_checkpoint(run)["iteration"] == payload["iteration"] + 2
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".tmp-")]


def test_two_gloo_processes_match_one_process(tmp_path):
    """Same init, same data, same averaged gradients. Parameters are compared element-wise with
    care: right after ActNorm's data-dependent init some gradients are exactly zero up to rounding,
    and Adam's first step turns that rounding into ±lr moves, so a handful of elements may differ
    by about lr while all others agree to float precision (later steps compound this, so one
    step is compared). The global gradient norm, which Adam's scale invariance would not reveal,
    must agree too (a sum instead of a mean would double it)."""
    env = dict(os.environ, MISSINGGLOW_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    one = str(tmp_path / "one")
    two = str(tmp_path / "two")
    single = _cli("train", *TINY_ARGS, "--iterations", "1", "--out", one, "--quiet", env=env)
    assert single.wait(timeout=300) == 0, single.stderr.read()
    ddp = torchrun_train([*TINY_ARGS, "--iterations", "1", "--out", two, "--quiet"], env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = final_params(one), final_params(two)
    start = torch.load(os.path.join(one, "checkpoints", "ckpt-00000000.pt"), weights_only=True)[
        "model"
    ]
    start_ddp = torch.load(os.path.join(two, "checkpoints", "ckpt-00000000.pt"), weights_only=True)[
        "model"
    ]
    assert_same_params(start, start_ddp, atol=0)  # ActNorm initialised on the same global batch
    diffs = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    assert (diffs < 1e-6).float().mean() > 0.98, f"{(diffs >= 1e-6).float().mean():.1%} differ"
    assert diffs.max() < 1e-3  # at most one lr-sized step (lr 1e-3, halved by the warm-up)
    norm_one = [m["grad_norm"] for m in metrics(one) if "grad_norm" in m][-1]
    norm_two = [m["grad_norm"] for m in metrics(two) if "grad_norm" in m][-1]
    assert norm_two == pytest.approx(norm_one, rel=1e-5)


def test_cli_says_which_preset_and_scales_the_square():
    config, line = resolve_config({"square": 20}, has_gpu=False)
    assert config.image_size == 16 and config.square == 5
    assert "small" in line and "5 px at 16×16" in line and "low-detail synthetic faces" in line
    assert config.synthetic_detail == "low"
    assert resolve_config({"preset": "paper"}, has_gpu=False)[0].synthetic_detail == "full"
    assert resolve_config({}, has_gpu=True)[0].preset == "paper"
    assert resolve_config({"hidden": 8}, has_gpu=False)[0].preset == "paper"  # an architecture
    with pytest.raises(UserError, match="synthetic_detail must be full or low, not 'blurry'"):
        resolve_config({"synthetic_detail": "blurry"}, has_gpu=False)


def test_the_command_line_stores_folders_as_absolute_paths(tmp_path, monkeypatch):
    """A run started in one directory and resumed from another still finds its folders."""
    monkeypatch.chdir(tmp_path)
    config = resolve_config({"data": "faces", "masks": "holes/x"}, has_gpu=False)[0]
    assert config.data == str(tmp_path / "faces") and config.masks == str(tmp_path / "holes/x")
    assert resolve_config({"data": "faces", "masks": "alpha"}, has_gpu=False)[0].masks == "alpha"
    assert resolve_config({}, has_gpu=False)[0].data is None


def test_speed_after_a_rollback_is_measured_from_the_checkpoint(tmp_path, monkeypatch):
    nonfinite_losses(monkeypatch, {4, 5})
    run = train(config(tmp_path, "rollback", max_bad_steps=2), progress=False)
    speeds = [m["images_per_s"] for m in metrics(run) if "images_per_s" in m]
    assert len(speeds) >= 6 and all(v > 0 for v in speeds), speeds
