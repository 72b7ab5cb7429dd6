"""The training step that does not wait for the device (training/step.py, adam.py, saver.py): its
Adam skips a bad step exactly and otherwise moves as torch's Adam does; the graph-ready step run
eagerly on the CPU ends where the old host-synced step does (float64); the CUDA-graph scheduling
(warm-up, capture, replay, recapture after a rollback, fallback) runs on the CPU with a stand-in
capture; the guard's rollback waits for the read after its run of bad steps; a loop iteration
makes no sync-like op but one read every log_every steps; checkpoints are written in the
background from a snapshot, and a failed write surfaces in the training thread."""

import copy
import errno
import json
import os
from types import SimpleNamespace

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from missingglow.atomic import WriteError
from missingglow.flow.model import Glow
from missingglow.flow.preprocess import bits_per_dim
from missingglow.training import checkpoint as ckpt
from missingglow.training import loop as train_module
from missingglow.training import step as step_module
from missingglow.training.adam import GuardedAdam
from missingglow.training.config import TrainConfig
from missingglow.training.saver import CheckpointWriter
from missingglow.training.step import StepLog, Stepper, TrainStep, synced_step
from missingglow.training.syncs import sync_ops
from missingglow.training.threads import Threads, busy_elsewhere

from helpers import tiny_config

pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py


config = tiny_config


def metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


ONE = SimpleNamespace(all_finite=lambda flag: flag)  # a process group of one


# --- Adam without host reads ------------------------------------------------------------------


def test_guarded_adam_moves_as_torch_adam_and_a_bad_step_changes_nothing(gen):
    shapes = [(4, 3, 3, 3), (5,), (7, 7)]
    start = [torch.randn(s, dtype=torch.float64, generator=gen) for s in shapes]
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    plain = [torch.nn.Parameter(p.clone()) for p in start]
    fused = [torch.nn.Parameter(p.clone()) for p in start]
    guarded = GuardedAdam(ours, 1e-2, "cpu")
    reference = torch.optim.Adam(plain, lr=1e-2)
    kernel = torch.optim.Adam(fused, lr=1e-2, fused=True)  # the formula CUDA's kernel uses
    for i in range(6):
        grads = [torch.randn(s, dtype=torch.float64, generator=gen) for s in shapes]
        bad = i in (0, 3)  # the very first step too: nothing may divide by a zero step count
        if bad:
            grads[1][2] = float("nan")
            grads[2][0, 0] = float("inf")
        for params in (ours, plain, fused):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
        before = [t.clone() for t in ours] + [
            t.clone() for v in guarded.state.values() for t in v.values()
        ]
        guarded.skip_unless(torch.tensor(not bad))
        guarded.step()
        kernel.found_inf = torch.tensor(float(bad))
        kernel.step()
        if not bad:
            reference.step()
        else:  # parameters, moments and step counts exactly as they were (or as new)
            after = list(ours) + [t for v in guarded.state.values() for t in v.values()]
            if i == 0:
                before += [torch.zeros_like(t) for t in after[len(before) :]]
            assert len(after) == len(before) and all(map(torch.equal, before, after))
    for a, b, c in zip(ours, plain, fused, strict=True):
        torch.testing.assert_close(a, b, atol=1e-15, rtol=0)
        torch.testing.assert_close(a, c, atol=1e-15, rtol=0)
    assert guarded.state[ours[0]]["step"].item() == 4 == reference.state[plain[0]]["step"].item()


def test_guarded_adam_reads_a_plain_adam_state_dict_and_keeps_its_mode():
    param = torch.nn.Parameter(torch.ones(3))
    plain = torch.optim.Adam([param], lr=0.5)
    param.grad = torch.ones(3)
    plain.step()
    guarded = GuardedAdam([param], 1e-3, "cpu")
    guarded.load_state_dict(plain.state_dict())
    assert guarded.param_groups[0]["lr"] == 0.5 and guarded.param_groups[0]["fused"] is None
    guarded.stage_lr()
    assert guarded.lr_tensor.item() == 0.5
    saved = guarded.state_dict()
    assert saved["param_groups"][0]["lr"] == 0.5  # a float, as checkpoints always held
    assert saved["state"][0]["step"].item() == 1


def test_guarded_adam_resumes_moments_saved_in_another_layout(gen):
    """A run of the reference model (contiguous 3×3 weights) resumed with the fused one
    (channels-last): the moments take the parameters' layout, and the step is the one a fresh
    copy of the saved state would take."""
    saved_model = Glow(blocks=1, flows=1, hidden=4, image_size=4, impl="reference")
    fused_model = Glow(blocks=1, flows=1, hidden=4, image_size=4, impl="fused")
    saved = GuardedAdam(saved_model.parameters(), 1e-2, "cpu")
    for q in saved_model.parameters():
        q.grad = torch.randn(q.shape, generator=gen)
    saved.step()
    fused_model.load_state_dict(saved_model.state_dict())  # the checkpoint, resumed
    resumed = GuardedAdam(fused_model.parameters(), 1e-2, "cpu")
    resumed.load_state_dict(copy.deepcopy(saved.state_dict()))  # as read from a checkpoint
    grads = [torch.randn(q.shape, generator=gen) for q in saved_model.parameters()]
    for model in (saved_model, fused_model):
        for q, g in zip(model.parameters(), grads, strict=True):
            q.grad = torch.empty_like(q).copy_(g)
    saved.step()
    resumed.step()
    for q in fused_model.parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            assert resumed.state[q][key].stride() == q.stride()
    for a, b in zip(saved_model.parameters(), fused_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --- the graph-ready step against the step as it was ------------------------------------------


def tiny_glow(dtype):
    torch.manual_seed(0)
    return Glow(blocks=2, flows=2, hidden=8, image_size=8, impl="fused").to(dtype)


def test_the_sync_free_step_ends_where_the_synced_step_does_in_float64(gen):
    """Six steps on the same batches, the third one's loss NaN: the graph-ready step (static
    input, lr as a tensor, masked Adam, the guard on the device) run eagerly matches the old
    loop's step with torch's Adam to float64 rounding, skips the same step and sums the same
    losses."""
    batches = [torch.rand(4, 3, 8, 8, generator=gen, dtype=torch.float64) - 0.5 for _ in range(6)]
    runs = {}
    for kind in ("synced", "sync-free"):
        model = tiny_glow(torch.float64)
        with torch.no_grad():
            model.log_prob(batches[0])  # ActNorm's data-dependent init
        calls = iter(range(100))

        def loss_of(x, model=model, calls=calls):
            loss = bits_per_dim(model.log_prob(x), 5, x[0].numel()).mean()
            return loss * float("nan") if next(calls) == 2 else loss

        params = [p for p in model.parameters() if p.requires_grad]
        losses = []
        if kind == "synced":
            optimizer = torch.optim.Adam(params, lr=1e-3)
            for x in batches:
                out = synced_step(loss_of, params, optimizer, x, 50.0, ONE)
                losses.append(out and out[0])
            sums = None
        else:
            optimizer = GuardedAdam(params, 1e-3, "cpu")
            step = TrainStep(loss_of, params, optimizer, batches[0].shape, "cpu", 50.0, ONE)
            step.x = step.x.double()
            for x in batches:
                step.x.copy_(x)
                optimizer.stage_lr()
                step()
            sums = step.log.read(0)
        runs[kind] = (model.state_dict(), losses, sums)
    (synced, losses, _), (free, _, sums) = runs["synced"], runs["sync-free"]
    for key in synced:
        torch.testing.assert_close(free[key], synced[key], atol=1e-12, rtol=0, msg=key)
    assert losses[2] is None
    assert sums["good"] == 5 and sums["bad"] == 1 and sums["first_bad"] == sums["last_bad"] == 2
    assert sums["loss_sum"] == pytest.approx(sum(v for v in losses if v is not None), rel=1e-12)


def test_step_log_counts_runs_of_bad_steps_across_reads():
    log = StepLog("cpu")
    verdicts = [True, False, False, True, False, False, False]
    for i, ok in enumerate(verdicts[:3]):
        log.add(torch.tensor(float(i)), torch.tensor(10.0 + i), torch.tensor(ok))
    first = log.read(100)
    assert (first["good"], first["bad"], first["worst"], first["run"]) == (1, 2, 2, 2)
    assert (first["first_bad"], first["last_bad"], first["grad_norm"]) == (101, 102, 10.0)
    for i, ok in enumerate(verdicts[3:]):
        log.add(torch.tensor(1.0), torch.tensor(20.0 + i), torch.tensor(ok))
    second = log.read(103)
    assert (second["good"], second["bad"], second["worst"], second["run_at_last"]) == (1, 3, 3, 3)
    assert (second["first_bad"], second["last_bad"], second["grad_norm"]) == (104, 106, 20.0)
    log.clear()
    assert log.read(107)["run"] == 0


# --- the CUDA graph's scheduling, on the CPU --------------------------------------------------


class Capture:
    """A stand-in for capture_cuda_graph: the 'replay' calls the step eagerly; counts captures."""

    def __init__(self, fail=False):
        self.count, self.fail = 0, fail

    def __call__(self, step):
        self.count += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        return step


def graphed(monkeypatch, capture):
    monkeypatch.setattr(
        train_module.Distributed, "graph", lambda self, wanted, speak, why_not=None: wanted
    )
    monkeypatch.setattr(step_module, "capture_cuda_graph", capture)


def nan_at(monkeypatch, calls):
    real, count = train_module.bits_per_dim, iter(range(10**9))

    def loss(*args):
        out = real(*args)
        return out * float("nan") if next(count) in calls else out

    monkeypatch.setattr(train_module, "bits_per_dim", loss)


def test_graph_path_recaptures_after_a_rollback_and_ends_where_eager_does(tmp_path, monkeypatch):
    nan_at(monkeypatch, {4, 5})
    eager = train_module.train(
        config(tmp_path, "eager", max_bad_steps=2, iterations=9, graph=False), progress=False
    )
    monkeypatch.undo()
    capture = Capture()
    graphed(monkeypatch, capture)
    nan_at(monkeypatch, {4, 5})
    run = train_module.train(
        config(tmp_path, "graph", max_bad_steps=2, iterations=9), progress=False
    )
    assert capture.count == 2  # after 3 eager steps, and again 3 steps after the rollback
    a, b = ckpt.load_checkpoint(eager), ckpt.load_checkpoint(run)
    assert a["state"] == b["state"] and b["state"]["rollbacks"] == 1
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_failed_capture_says_so_once_and_trains_eagerly(tmp_path, monkeypatch):
    capture = Capture(fail=True)
    graphed(monkeypatch, capture)
    said = []
    run = train_module.train(config(tmp_path, "fallback"), progress=False, say=said.append)
    lines = [line for line in said if "CUDA graph" in line]
    assert lines == [
        "the training step cannot run as a CUDA graph (RuntimeError: operation not "
        "permitted when stream is capturing); running it eagerly"
    ]
    assert capture.count == 1 and ckpt.load_checkpoint(run)["iteration"] == 6


class _Step:
    """A step that says when it ran eagerly, for Stepper."""

    def __init__(self, calls):
        self.calls, self.x = calls, torch.zeros(1)
        self.optimizer = SimpleNamespace(stage_lr=lambda: calls.append("lr"))

    def __call__(self):
        self.calls.append("eager")


def test_stepper_warms_up_captures_replays_and_starts_over_after_reset():
    calls = []
    stepper = Stepper(
        _Step(calls), True, print, warmup=2, capture=lambda step: lambda: calls.append("replay")
    )
    for _ in range(4):
        stepper()
    stepper.reset()
    for _ in range(3):
        stepper()
    assert [c for c in calls if c != "lr"] == [
        "eager",
        "eager",
        "replay",
        "replay",
        "eager",
        "eager",
        "replay",
    ]
    assert calls.count("lr") == 7  # the learning rate is staged before every step, replays too


def test_the_graph_is_tried_on_one_gpu_only_when_the_step_reads_nothing():
    env = object.__new__(train_module.Distributed)
    env.world, said = 1, []
    env.device = torch.device("cpu")
    assert not env.graph(True, said.append)  # no CUDA graph on the CPU, and nothing to say
    env.device = torch.device("cuda")
    assert env.graph(True, said.append) and not env.graph(False, said.append) and not said
    assert not env.graph(True, said.append, "with memory saving (why)")
    env.world = 2
    assert not env.graph(True, said.append)
    assert said == [
        "with memory saving (why) the training steps run eagerly, not as a CUDA graph",
        "under torchrun the training steps run eagerly, not as a CUDA graph",
    ]


# --- the guard's lag --------------------------------------------------------------------------


def test_a_rollback_waits_for_the_read_after_its_bad_run(tmp_path, monkeypatch):
    """log_every 4: iterations 5 and 6 are bad (max_bad_steps 2); the read at iteration 8 sees
    the run and rolls back to the checkpoint of iteration 4, which the read before it vouched
    for; iterations 7 and 8 ran and are dropped with the rollback."""
    nan_at(monkeypatch, {5, 6})
    said = []
    run = train_module.train(
        config(tmp_path, "lag", max_bad_steps=2, iterations=12, log_every=4, checkpoint_every=4),
        progress=False,
        say=said.append,
    )
    payload = ckpt.load_checkpoint(run)
    assert payload["iteration"] == 12 and payload["state"]["rollbacks"] == 1
    assert payload["state"]["skipped"] == 2
    assert (
        "iterations 5–6: 2 non-finite losses or gradients, steps skipped (at most 2 in a "
        "row, 2 in all)"
    ) in said
    events = [m for m in metrics(run) if m.get("event") == "rollback"]
    assert [e["iter"] for e in events] == [4]
    logged = [m["iter"] for m in metrics(run) if "bpd" in m]
    assert logged == [4, 8, 12]  # no line for the dropped 8; the replayed 8 logs


# --- syncs ------------------------------------------------------------------------------------


def syncs_per_iteration(tmp_path, name, impl, log_every=4):
    counts = []
    for iterations in (log_every, 3 * log_every):
        c = config(
            tmp_path,
            f"{name}-{iterations}",
            iterations=iterations,
            log_every=log_every,
            checkpoint_every=1000,
            impl=impl,
        )
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_module.train(c, progress=False, say=lambda line: None)
        counts.append(sum(sync_ops(prof.events()).values()))
    return (counts[1] - counts[0]) / (2 * log_every)


def test_a_training_iteration_makes_no_sync_like_op(tmp_path):
    """Sync-like ops (those that read the device: item, nonzero, equal, ...) counted by the
    profiler over 2·log_every more iterations of `train`, the fused ops' own ATen calls included:
    the end-of-run work cancels out. The reference model's ActNorm reads its flag every call,
    which shows that the count sees them."""
    assert syncs_per_iteration(tmp_path, "fused", "fused") <= 0.5
    assert syncs_per_iteration(tmp_path, "reference", "reference") >= 1


# --- background checkpoints -------------------------------------------------------------------


def test_a_checkpoint_is_the_state_when_saved_and_written_in_the_background(tmp_path):
    run = str(tmp_path / "run")
    writer = CheckpointWriter(run)
    weights = torch.zeros(1000)
    writer.save({"iteration": 1, "model": {"w": weights}})
    weights.add_(1)  # the training goes on while the file is written
    writer.save({"iteration": 2, "model": {"w": weights}})  # waits for the first write
    writer.wait()
    first = torch.load(os.path.join(run, "checkpoints", "ckpt-00000001.pt"), weights_only=True)
    assert torch.equal(first["model"]["w"], torch.zeros(1000))
    assert torch.equal(ckpt.load_checkpoint(run)["model"]["w"], torch.ones(1000))


def test_a_failed_background_write_is_raised_in_the_training_thread(tmp_path, monkeypatch):
    def full(run_dir, payload):
        raise WriteError(os.path.join(run_dir, "x.pt"), OSError(errno.ENOSPC, "No space left"))

    monkeypatch.setattr(ckpt, "save_checkpoint", full)
    writer = CheckpointWriter(str(tmp_path))
    writer.save({"iteration": 1})
    writer.thread.join()
    with pytest.raises(WriteError, match="No space left"):
        writer.check()
    writer.check()  # raised once
    writer.close()


# --- settings and threads ---------------------------------------------------------------------


def test_resume_takes_this_machines_settings_and_refuses_the_others():
    from missingglow.cli.train_commands import refuse_settings_beside_resume

    given = dict.fromkeys(TrainConfig.names())
    refuse_settings_beside_resume(dict(given, graph=False, threads=1, eval_batch=8, iterations=9))
    with pytest.raises(Exception, match="only --iterations applies, not --lr .*--graph"):
        refuse_settings_beside_resume(dict(given, lr=1.0, graph=False))
    assert set(TrainConfig.machine_names()) == {"graph", "threads", "eval_batch"}


def test_a_resumed_run_takes_new_machine_settings(tmp_path):
    run = train_module.train(config(tmp_path, "m", iterations=3), progress=False)
    train_module.train(
        resume=run, iterations=4, progress=False, machine={"eval_batch": 3, "graph": False}
    )
    stored = ckpt.load_checkpoint(run)["config"]
    assert stored["eval_batch"] == 3 and stored["graph"] is False and stored["lr"] == 1e-3


def test_threads_follow_the_setting_then_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert Threads(1, "cpu", print).count == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        threads = Threads(None, "cpu", print)
        assert threads.fixed and threads.update() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_follow_the_cores_other_processes_leave_free(monkeypatch):
    """Two cores; each look: (wall s, busy ticks of the cores, this process's CPU s). Others
    using 0.9 of a core leave one thread; 0.2 of a core still counts as free."""
    import missingglow.training.threads as threads_module

    ticks = threads_module._TICKS
    looks = iter(
        [
            (0.0, 0, 0.0),
            (1.0, 1.9 * ticks, 1.0),  # others 0.9 core: one thread
            (2.0, 2.9 * ticks, 1.8),  # then 0.2 of a core: two
            (3.0, 2.9 * ticks, 2.8),  # a look starts afresh here: what came before is
            (4.0, 4.8 * ticks, 3.8),  # forgotten, and others use 0.9 of a core during it
        ]
    )
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "allowed_cores", lambda: [0, 1])
    monkeypatch.setattr(threads_module, "_snapshot", lambda cores: next(looks))
    said, before = [], torch.get_num_threads()
    try:
        threads = Threads(None, "cpu", said.append, look=0)
        assert threads.count == 1 and torch.get_num_threads() == 1
        assert said == [
            "other processes keep 1 of this process's 2 cores busy: training with 1 "
            "thread and following the load (--threads N to fix it)"
        ]
        assert threads.update() == 2 and torch.get_num_threads() == 2
        assert threads.look(0) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert busy_elsewhere((0.0, None, 0.0), (1.0, 5, 0.0)) == 0.0  # no /proc/stat: all free


def test_precision_reaches_the_model_and_fp32_checkpoints_stay_as_they_were(tmp_path):
    from dataclasses import replace

    from missingglow.errors import UserError
    from missingglow.training.config import validate
    from missingglow.training.loop import model_config

    fp32 = config(tmp_path, "p")
    assert "precision" not in model_config(fp32)
    bf16 = config(tmp_path, "p", precision="bf16")
    assert model_config(bf16)["precision"] == "bf16"
    with pytest.raises(UserError, match="precision bf16 runs on the fused flow steps"):
        validate(replace(bf16, impl="reference"))
