"""Tests that kill mutants the rest of the suite lets live (tests/mutation.sh, docs/mutation.md):
the evaluation's pooling, held-out bits/dim, checkpoints and the training loop's non-finite guard,
on small inputs whose results are worked out by hand."""

import datetime
import errno
import json
import math
import os
import re

import pytest
import torch
import torch.distributed as dist

from missingglow.analysis.evaluate import _errors, _Pool, _psnr
from missingglow.errors import UserError
from missingglow.flow.model import Glow
from missingglow.flow.preprocess import bits_per_dim, quantize
from missingglow.seeding import generator
from missingglow.training import checkpoint as ckpt
from missingglow.training import loop as train_module
from missingglow.training.config import resolve_config
from missingglow.training.heldout import heldout_bits_per_dim

import helpers

# --- the evaluation's pooling -----------------------------------------------------------------


def test_errors_measure_inside_against_the_original_and_outside_against_the_input():
    # one 3×1×2 image: pixel 0 is the hole; out 0.5, original 0.25, input 0.1 everywhere
    mask = torch.tensor([[[[True, False]]]])
    out = torch.full((1, 3, 1, 2), 0.5)
    inside, n_in, outside, n_out, bad = _errors(
        out, torch.full_like(out, 0.25), torch.full_like(out, 0.1), mask
    )
    assert inside == pytest.approx(3 * 0.25**2) and n_in == 3
    assert outside == pytest.approx(3 * 0.4**2) and n_out == 3
    assert bad == 0


def test_errors_count_the_non_finite_images_not_the_finite_ones():
    ref = torch.zeros(3, 3, 1, 1)
    out = ref.clone()
    out[2, 1] = float("inf")
    assert _errors(out, ref, ref, torch.ones(3, 1, 1, 1, dtype=torch.bool))[4] == 1


def test_pool_sums_batches():
    pool = _Pool()
    pool.add((0.5, 2, 0.25, 4, 1), 2, seconds=0.75)
    pool.add((1.5, 6, 0.75, 12, 2), 1)  # no time given: it adds none
    row = pool.row("m", 0.5)
    assert row["rmse_in"] == pytest.approx(math.sqrt(2.0 / 8))
    assert row["rmse_out"] == pytest.approx(math.sqrt(1.0 / 16))
    assert row["psnr_in"] == pytest.approx(-20 * math.log10(0.5))
    assert row["nonfinite"] == 3 and row["images"] == 3
    assert row["seconds_per_image"] == pytest.approx(0.25)
    assert (row["method"], row["alpha"]) == ("m", 0.5)


def test_pool_of_one_image_takes_its_whole_time():
    pool = _Pool()
    pool.add((0.0, 1, 0.0, 1, 0), 1, seconds=0.5)
    assert pool.row("m", None)["seconds_per_image"] == 0.5


def test_empty_pool_scores_nan():
    row = _Pool().row("m", None)
    for key in ("rmse_in", "psnr_in", "rmse_out", "psnr_out"):
        assert math.isnan(row[key]), key
    assert row["images"] == 0 and row["seconds_per_image"] == 0


def test_psnr_of_a_non_finite_rmse_is_nan():
    assert math.isnan(_psnr(float("nan"))) and math.isnan(_psnr(float("inf")))


# --- held-out bits/dim --------------------------------------------------------------------------

BITS = 3  # 8 bins: level k is the 8-bit value 32k + 16


def level(*k):
    return torch.tensor(k, dtype=torch.float32).view(3, 1, 1) * 32 / 255 + 16 / 255


class Heldout:
    def __init__(self, masked, clean):
        self.masked, self.clean = torch.stack(masked), torch.stack(clean)

    def __len__(self):
        return len(self.masked)

    def batch(self, indices):
        return self.masked[indices], self.clean[indices], None


class BinModel:
    """log p(x) = −ln 2 · Σ bin index: bits/dim = BITS + Σ index / D, whatever the noise in a bin;
    −inf where the first value is in the top bin."""

    in_channels = 3

    def log_prob(self, x):
        k = torch.floor((x + 0.5) * 2**BITS).flatten(1)
        lp = -math.log(2) * k.sum(1)
        return torch.where(k[:, 0] == 2**BITS - 1, -math.inf, lp)


# masked: Σ levels 3, 9, 6 → 4, 6, 5 bits/dim (D = 3); clean: 0, 3, 3 → 3, 4, 4
MASKED = [level(1, 1, 1), level(3, 3, 3), level(0, 0, 6)]
CLEAN = [level(0, 0, 0), level(3, 0, 0), level(0, 0, 3)]


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_heldout_bits_per_dim_by_hand(batch):
    out = heldout_bits_per_dim(BinModel(), Heldout(MASKED, CLEAN), BITS, seed=0, batch=batch)
    assert out["masked"] == pytest.approx(5) and out["clean"] == pytest.approx(11 / 3)
    assert out["gap"] == pytest.approx(4 / 3)
    assert out["nonfinite"] == 0 and out["images"] == 3


def test_heldout_limit_takes_the_first_images():
    out = heldout_bits_per_dim(BinModel(), Heldout(MASKED, CLEAN), BITS, seed=0, limit=2, batch=1)
    assert out["masked"] == pytest.approx(5) and out["clean"] == pytest.approx(3.5)
    assert out["images"] == 2
    assert heldout_bits_per_dim(BinModel(), Heldout(MASKED, CLEAN), BITS, 0, 9)["images"] == 3


def test_a_non_finite_image_leaves_its_pair_out():
    masked = MASKED[:2] + [level(7, 0, 0)]  # image 2 masked: log p = −inf
    out = heldout_bits_per_dim(BinModel(), Heldout(masked, CLEAN), BITS, seed=0, batch=2)
    assert out["masked"] == pytest.approx(5) and out["clean"] == pytest.approx(3.5)
    assert out["nonfinite"] == 1 and out["images"] == 3
    out = heldout_bits_per_dim(BinModel(), Heldout([level(7, 0, 0)], [level(7, 0, 0)]), BITS, 0)
    assert math.isnan(out["masked"]) and math.isnan(out["clean"]) and out["nonfinite"] == 1


class SquareModel:
    """log p(x) = −Σ x²: sees where the noise put x inside its bin."""

    in_channels = 3

    def log_prob(self, x):
        return -(x.double() ** 2).flatten(1).sum(1)


def test_heldout_noise_is_seeded_and_shared_by_each_pair():
    data = Heldout(MASKED, CLEAN)
    out = heldout_bits_per_dim(SquareModel(), data, BITS, seed=7, batch=8)
    noise = torch.rand(data.masked.shape, generator=generator(7, "eval-noise")) / 2**BITS
    for key, images in (("masked", data.masked), ("clean", data.clean)):
        lp = SquareModel().log_prob(quantize(images, BITS) + noise)
        assert out[key] == pytest.approx(bits_per_dim(lp, BITS, 3).mean().item(), rel=1e-6)
    assert heldout_bits_per_dim(SquareModel(), data, BITS, seed=7, batch=8) == out


# --- checkpoints --------------------------------------------------------------------------------


def tiny_glow():
    torch.manual_seed(0)
    return Glow(blocks=1, flows=1, hidden=4, image_size=4)


def write_run(tmp_path, iterations=(1, 2, 3)):
    run = str(tmp_path / "run")
    for i in iterations:
        ckpt.save_checkpoint(run, {"iteration": i})
    return run


def names(run):
    return sorted(os.listdir(os.path.join(run, "checkpoints")))


def test_save_keeps_the_newest_three_and_nothing_else_is_touched(tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(os.path.join(run, "checkpoints"))
    for stray in ("ckpt-notes.txt", "zz.pt"):
        open(os.path.join(run, "checkpoints", stray), "w").close()
    for i in range(5):
        path = ckpt.save_checkpoint(run, {"iteration": i})
    assert names(run) == [
        "ckpt-00000002.pt",
        "ckpt-00000003.pt",
        "ckpt-00000004.pt",
        "ckpt-notes.txt",
        "zz.pt",
    ]
    saved = torch.load(path, weights_only=True)
    assert saved == {"iteration": 4, "format": "missingglow-checkpoint", "version": 1}


class FullDisk:
    """Fills after 1000 bytes: torch then reports its own RuntimeError."""

    written = 0

    def write(self, data):
        self.written += len(data)
        if self.written > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)

    def flush(self):
        pass


def test_a_full_disk_is_reported_as_the_os_error_not_as_torchs():
    with pytest.raises(OSError) as err:
        ckpt._save({"w": torch.ones(10000)}, FullDisk())
    assert err.value.errno == errno.ENOSPC


def test_resolve_reads_latest_despite_bad_bytes_and_nul(tmp_path):
    run = write_run(tmp_path, [1])
    with open(os.path.join(run, "latest"), "wb") as f:
        f.write(b"checkpoints/ckpt-00000001.pt\0\n")
    assert ckpt.resolve(run) == os.path.join(run, "checkpoints", "ckpt-00000001.pt")
    with open(os.path.join(run, "latest"), "wb") as f:
        f.write(b"checkpoints/\xff\xfe.pt\n")
    with pytest.raises(UserError, match="not found"):
        ckpt.resolve(run)
    with pytest.raises(UserError, match="is a folder without a `latest` checkpoint"):
        ckpt.resolve(str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        ckpt.resolve(str(tmp_path / "nothing.pt"))


def test_read_refuses_pickled_objects_naming_the_error(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"format": "missingglow-checkpoint", "when": datetime.date(2020, 1, 1)}, path)
    with pytest.raises(UserError, match=r"cannot read checkpoint .*\(UnpicklingError\)"):
        ckpt.load_checkpoint(str(path))


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    # torch.save records each tensor's device; make it record cuda:0, as a GPU run's file does
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    ckpt.save_checkpoint(str(tmp_path), {"iteration": 1, "w": torch.ones(2)})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(str(tmp_path))["w"].device.type == "cpu"


@pytest.mark.parametrize("content", [[1, 2], {"format": "other"}])
def test_foreign_payloads_are_refused_naming_the_file(tmp_path, content):
    path = str(tmp_path / "foreign.pt")
    torch.save(content, path)
    for load in (ckpt.load_checkpoint, ckpt.load_model):
        with pytest.raises(UserError, match=re.escape(f"{path} is not a missingglow checkpoint")):
            load(path)


def test_a_file_without_a_version_is_version_0(tmp_path):
    path = str(tmp_path / "old.pt")
    torch.save({"format": "missingglow-checkpoint", "iteration": 5}, path)
    assert ckpt.load_checkpoint(path)["iteration"] == 5


def test_a_good_latest_is_used_without_a_word(tmp_path):
    run = write_run(tmp_path)
    said = []
    assert ckpt.load_checkpoint(run, say=said.append)["iteration"] == 3
    assert said == []


def test_a_damaged_latest_falls_back_to_the_newest_checkpoint_that_loads(tmp_path):
    run = write_run(tmp_path)
    folder = os.path.join(run, "checkpoints")
    with open(os.path.join(folder, "ckpt-00000003.pt"), "wb") as f:
        f.write(b"cut short")
    torch.save({"iteration": 9, "format": "missingglow-checkpoint"}, os.path.join(folder, "z.pt"))
    said = []
    assert ckpt.load_checkpoint(run, say=said.append)["iteration"] == 2
    assert said == [
        f"{os.path.join(run, 'latest')} is missing or names no checkpoint that "
        "loads; using checkpoints/ckpt-00000002.pt, the newest one that does"
    ]


def test_no_checkpoint_that_loads_raises_the_first_error(tmp_path):
    run = write_run(tmp_path, [1])
    path = os.path.join(run, "checkpoints", "ckpt-00000001.pt")
    torch.save({"format": "other"}, path)
    with pytest.raises(UserError, match=re.escape(f"{path} is not a missingglow checkpoint")):
        ckpt.load_checkpoint(run)
    os.remove(path)
    with pytest.raises(UserError, match="not found"):
        ckpt.load_checkpoint(run)


def test_build_model_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="model options are not understood"):
        ckpt.build_model({"colours": 3})
    model = tiny_glow()
    state = model.state_dict()
    key = next(iter(state))
    del state[key]
    with pytest.raises(UserError) as err:
        ckpt.build_model(model.config, state)
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith(
        f"do not fit its stated architecture ({model.config}): Missing key(s) "
        f'in state_dict: "{key}".'
    )


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_model_from_a_run_loads_its_weights_at_any_size(tmp_path):
    model = tiny_glow()
    for p in model.parameters():
        torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(1))
    run = str(tmp_path / "run")
    ckpt.save_checkpoint(
        run, {"iteration": 1, "model_config": model.config, "model": model.state_dict()}
    )
    loaded, payload = ckpt.load_model(run)
    assert payload["iteration"] == 1 and not loaded.training
    assert_same_weights(loaded, model)
    bigger, _ = ckpt.load_model(run, image_size=8)
    assert bigger.config["image_size"] == 8
    assert_same_weights(bigger, model)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_model_takes_a_rosinality_state_dict(tmp_path, prefix):
    model = tiny_glow()
    path = str(tmp_path / "model_000100.pt")
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    loaded, payload = ckpt.load_model(path, image_size=4)
    assert payload is None and loaded.config["image_size"] == 4
    assert_same_weights(loaded, model)
    assert ckpt.load_model(path)[0].config["image_size"] == 64


def test_load_model_falls_back_like_load_checkpoint(tmp_path):
    model = tiny_glow()
    run = str(tmp_path / "run")
    for i in (1, 2):
        ckpt.save_checkpoint(
            run, {"iteration": i, "model_config": model.config, "model": model.state_dict()}
        )
    with open(os.path.join(run, "checkpoints", "ckpt-00000002.pt"), "wb") as f:
        f.write(b"cut short")
    said = []
    assert ckpt.load_model(run, say=said.append)[1]["iteration"] == 1 and len(said) == 1


# --- the training loop's non-finite guard -----------------------------------------------------

TINY = dict(helpers.TINY, max_bad_steps=2)


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("MISSINGGLOW_CACHE", str(tmp_path / "cache"))
    return resolve_config(dict(TINY, out=str(tmp_path / "run")), has_gpu=False)[0]


def nan_at(monkeypatch, calls):
    """The training loss is NaN at these calls (0-based)."""
    real, count = train_module.bits_per_dim, iter(range(10**9))

    def loss(*args):
        out = real(*args)
        return out * float("nan") if next(count) in calls else out

    monkeypatch.setattr(train_module, "bits_per_dim", loss)


def test_single_bad_steps_apart_never_roll_back(config, monkeypatch):
    # max_bad_steps 2: call 0 (iteration 0) bad, call 1 good, call 2 (iteration 2) bad; a skipped
    # step uses up its batch, since the host queues the next step before it knows
    nan_at(monkeypatch, {0, 2})
    said = []
    run = train_module.train(config, progress=False, say=said.append)
    state = ckpt.load_checkpoint(run)["state"]
    assert state["skipped"] == 2 and state["rollbacks"] == 0
    assert "iteration 0: non-finite loss or gradient, step skipped (1 in a row, 1 in all)" in said
    assert "iteration 2: non-finite loss or gradient, step skipped (1 in a row, 2 in all)" in said


def test_the_count_restarts_after_a_rollback(config, monkeypatch):
    # calls 4, 5: iterations 4 and 5 → roll back to 3; call 6, iteration 3 again, bad once more
    nan_at(monkeypatch, {4, 5, 6})
    run = train_module.train(config, progress=True, say=lambda message: None)
    payload = ckpt.load_checkpoint(run)
    assert payload["iteration"] == 6
    assert payload["state"]["rollbacks"] == 1 and payload["state"]["skipped"] == 3


def test_a_non_finite_gradient_alone_skips_the_step(config, monkeypatch):
    real, count = torch.nn.utils.clip_grad_norm_, iter(range(10**9))

    def clip(*args, **kwargs):
        norm = real(*args, **kwargs)
        return norm * float("inf") if next(count) == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    state = ckpt.load_checkpoint(train_module.train(config, progress=False))["state"]
    assert state["skipped"] == 1 and state["rollbacks"] == 0


def two_ranks(monkeypatch, other):
    """Distributed as rank 0 of two; the other rank's flag is `other`, or the same as this
    rank's (None): its tensor is then this rank's own."""
    env = object.__new__(train_module.Distributed)
    env.world, env.rank, env.device = 2, 0, torch.device("cpu")

    def all_reduce(t, op=dist.ReduceOp.SUM):
        theirs = t.clone() if other is None else torch.tensor([1.0 if other else 0.0])
        if op == dist.ReduceOp.MIN:
            t.copy_(torch.minimum(t, theirs))
        elif op == dist.ReduceOp.SUM:
            t.add_(theirs)
        else:
            raise ValueError(op)

    monkeypatch.setattr(train_module.dist, "all_reduce", all_reduce)
    return env


@pytest.mark.parametrize(
    "mine,other,expected",
    [(True, None, True), (False, None, False), (True, False, False), (False, True, False)],
)
def test_all_finite_needs_every_rank(monkeypatch, mine, other, expected):
    assert two_ranks(monkeypatch, other).all_finite(mine) is expected


def test_each_rollback_halves_the_learning_rate_again(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters())
    run = str(tmp_path / "run")
    ckpt.save_checkpoint(
        run, {"iteration": 3, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    )
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    env = object.__new__(train_module.Distributed)
    env.world = 1
    metrics = train_module.Metrics(run, True)
    state, said = {"lr_scale": 1.0, "rollbacks": 0}, []
    for _ in range(2):
        with torch.no_grad():
            model.weight.add_(1)
        assert train_module.roll_back(run, model, optimizer, state, said.append, env, metrics) == 3
    assert state == {"lr_scale": 0.25, "rollbacks": 2} and metrics.since == 3
    assert torch.equal(model.weight, saved["weight"])
    assert said[-1] == (
        "too many non-finite steps in a row: rolled back to iteration 3 with the "
        "learning rate halved (×0.25)"
    )
    with open(os.path.join(run, "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f]
    assert [(e["event"], e["iter"], e["lr_scale"]) for e in events] == [
        ("rollback", 3, 0.5),
        ("rollback", 3, 0.25),
    ]
