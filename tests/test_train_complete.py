"""train --complete: the holes start as a harmonic fill and are re-fitted from the model, the
observed pixels never change, the fills are checkpointed and a resumed run continues exactly."""

import json
import os

import pytest
import torch

from missingglow.completion.invert import harmonic_fill
from missingglow.data.cache import open_dataset
from missingglow.data.datasets import MaskedImages
from missingglow.errors import UserError
from missingglow.flow.model import Glow
from missingglow.flow.preprocess import quantize, to_model
from missingglow.training import checkpoint as ckpt
from missingglow.training import loop as train_module
from missingglow.training.fills import Fills, to_bytes
from missingglow.training.loop import train

from helpers import (
    TINY_CLI,
    error_line,
    randomize,
    run_in_process,
    tiny_config,
    torchrun_train,
)

COMPLETE = dict(complete=True, refill_every=2, refill_steps=2)


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py


@pytest.fixture
def images(tmp_path):
    cache = open_dataset(None, 8, cache_dir=str(tmp_path / "c"), synthetic_count=40, quiet=True)
    return MaskedImages(cache, square=3, count=2, seed=1, split="train")


@pytest.fixture
def model():
    net = Glow(blocks=2, flows=2, hidden=8, image_size=8)
    randomize(net)
    with torch.no_grad():
        net.log_prob(torch.rand(16, 3, 8, 8) - 0.5)
    return net


def test_fills_start_harmonic_and_keep_the_observed_pixels(images):
    fills = Fills(images, channels=3, n_bits=5, chunk=7)  # chunks that do not divide the split
    js = list(range(len(images)))
    masked, clean, _ = images.batch(js)
    missing = images.missing(js)
    assert missing.any() and (~missing).any()
    assert torch.equal(fills.values, to_bytes(harmonic_fill(masked, missing)))
    filled = fills.batch(js)
    observed = (~missing).expand_as(filled)
    assert torch.equal(filled[observed], masked[observed])
    assert torch.equal(filled[observed], clean[observed])
    # the grey is gone from the holes: each is its own smooth fill, not 128/255
    assert not torch.equal(filled[~observed], masked[~observed])


def log_density(model, images):
    with torch.no_grad():
        return model.log_prob(to_model(images, 5))


def test_a_refill_moves_the_holes_only_and_never_lowers_the_density(images, model):
    fills = Fills(images, channels=3, n_bits=5, chunk=16)
    js = list(range(len(images)))
    before = fills.batch(js)
    result = fills.refill(model, "cpu", steps=3)
    after = fills.batch(js)
    observed = (~images.missing(js)).expand_as(after)
    assert torch.equal(after[observed], before[observed])
    assert not torch.equal(after[~observed], before[~observed])
    assert result["changed"] > 0 and result["fill_rmse"] == fills.error()
    changed = (after != before).flatten(1).any(1)
    assert result["kept"] == changed.float().mean().item() > 0
    gain = log_density(model, after) - log_density(model, before)
    assert (gain[changed] >= 0).all() and (gain[~changed] == 0).all()
    assert model.training  # put back as it was
    assert fills.refills == 1


def test_a_refill_split_over_two_processes_makes_one_processs_fills(images, model):
    """Each of two ranks re-fits every other chunk; what `share` hands rank 0 (rank 1's rows and
    sums, as the loop's broadcasts would) gives it the fills and figures of one process."""
    whole = Fills(images, channels=3, n_bits=5, chunk=7)  # 4 chunks, the last one short
    expected = whole.refill(model, "cpu", steps=2)
    from_rank1 = {}

    def record(values, owners, totals):
        from_rank1.update(values=values.clone(), totals=totals.clone(), owners=owners)

    Fills(images, channels=3, n_bits=5, chunk=7).refill(
        model, "cpu", 2, rank=1, world=2, share=record
    )

    def merge(values, owners, totals):
        assert owners == from_rank1["owners"] == [0, 1, 0, 1]
        rows = whole.chunk_rows()  # the same chunks on every rank
        for (first, end), owner in zip(rows, owners, strict=True):
            if owner == 1:
                values[first:end] = from_rank1["values"][first:end]
        totals += from_rank1["totals"]

    rank0 = Fills(images, channels=3, n_bits=5, chunk=7)
    seen = []
    result = rank0.refill(model, "cpu", 2, on_chunk=seen.append, rank=0, world=2, share=merge)
    assert seen == [7, 7]  # its own chunks only
    assert torch.equal(rank0.values, whole.values) and rank0.refills == 1
    assert {k: v for k, v in result.items() if k != "seconds"} == {
        k: v for k, v in expected.items() if k != "seconds"
    }


def test_a_refill_inverts_from_the_current_fill(images, model, monkeypatch):
    import missingglow.training.fills as fills_module

    fills = Fills(images, channels=3, n_bits=5, chunk=64)
    seen = []

    def spy(model, x, missing, **options):
        seen.append((x.clone(), missing.clone(), options))
        return x.clone().unsqueeze(0), None

    monkeypatch.setattr(fills_module, "invert", spy)
    fills.refill(model, "cpu", steps=7)
    (x, missing, options), js = seen[0], list(range(len(images)))
    assert options == {"steps": 7, "start": "input"}  # invert's own alpha, γ and step size
    assert torch.equal(missing, images.missing(js))
    assert torch.equal(x, to_model(fills.batch(js), 5))
    # the same bins back: the model sees the same images (their 8-bit values are now the bins'
    # representatives, as from_model gives them)
    assert fills.refills == 1
    assert torch.equal(to_model(fills.batch(js), 5), to_model(Fills(images, 3, 5).batch(js), 5))


def test_a_non_finite_completion_keeps_its_old_fill(images, model, monkeypatch):
    fills = Fills(images, channels=3, n_bits=5, chunk=64)
    old = fills.values.clone()
    import missingglow.training.fills as fills_module

    def broken(model, x, missing, **options):
        out = x.clone().unsqueeze(0)
        out[0, 0] = float("nan")  # image 0 fails, the others come back as their input
        return out, None

    monkeypatch.setattr(fills_module, "invert", broken)
    fills.refill(model, "cpu", steps=1)
    assert torch.equal(fills.values[0], old[0])


def test_fills_round_trip_through_a_state_dict(images, model):
    fills = Fills(images, channels=3, n_bits=5)
    fills.refill(model, "cpu", steps=2)
    state = fills.state_dict()
    assert state["holes"].numel() == int(fills.holes().sum()) < fills.values.numel()
    other = Fills(images, channels=3, n_bits=5)
    assert not torch.equal(other.values, fills.values)
    other.load_state_dict(state)
    assert torch.equal(other.values, fills.values) and other.refills == 1
    resumed = Fills(images, channels=3, n_bits=5, start=False)  # no harmonic fill to overwrite
    resumed.load_state_dict(state)
    assert torch.equal(resumed.values, fills.values)
    with pytest.raises(UserError, match="other holes"):
        other.load_state_dict(dict(state, holes=state["holes"][:-1]))
    moved = state["sizes"].clone()
    moved[[0, 1]] = moved[[1, 0]] + torch.tensor([1, -1], dtype=torch.int32)
    with pytest.raises(UserError, match="other holes"):  # same count, other places
        other.load_state_dict(dict(state, sizes=moved))


def test_training_batches_differ_from_the_naive_ones_only_in_the_holes(tmp_path, monkeypatch):
    """What the step is fed: the naive batch with its holes' grey replaced, same noise, same
    observed pixels."""
    fed, real = {}, train_module.Batches.batch

    def recording(name):
        def batch(self, iteration, part=None):
            out = real(self, iteration, part)
            fed.setdefault(name, {})[iteration] = out.clone()
            return out

        return batch

    for name, extra in (("naive", {}), ("complete", COMPLETE)):
        monkeypatch.setattr(train_module.Batches, "batch", recording(name))
        train(tiny_config(tmp_path, name, iterations=5, **extra), progress=False)
    cfg = tiny_config(tmp_path, "x")
    images = MaskedImages(
        open_dataset(None, 8, synthetic_count=48, quiet=True), cfg.square, cfg.squares, cfg.seed
    )
    order = train_module.BatchOrder(len(images), cfg.batch, cfg.seed)
    first = Fills(images, cfg.channels or 3, cfg.n_bits)  # the fills before any refill
    for t in range(5):
        naive, complete = fed["naive"][t], fed["complete"][t]
        hole = images.missing(order(t)).expand_as(naive)
        assert torch.equal(naive[~hole], complete[~hole]), t
        assert not torch.equal(naive[hole], complete[hole]), t
    # up to the refill after step 2 the holes hold the harmonic fills; after it, other values
    noise = fed["naive"][3] - quantize(images.batch(order(3))[0], cfg.n_bits)
    harmonic = quantize(first.batch(order(3)), cfg.n_bits) + noise
    assert torch.equal(
        fed["complete"][1],
        quantize(first.batch(order(1)), cfg.n_bits)
        + (fed["naive"][1] - quantize(images.batch(order(1))[0], cfg.n_bits)),
    )
    assert not torch.equal(fed["complete"][3], harmonic)


def test_a_resumed_complete_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = train(tiny_config(tmp_path, "whole", **COMPLETE), progress=False)
    part = train(tiny_config(tmp_path, "part", iterations=3, **COMPLETE), progress=False)
    train(resume=part, iterations=6, progress=False)
    a, b = ckpt.load_checkpoint(whole), ckpt.load_checkpoint(part)
    assert a["iteration"] == b["iteration"] == 6
    assert torch.equal(a["fills"]["holes"], b["fills"]["holes"])
    assert a["fills"]["refills"] == b["fills"]["refills"] == 2  # at 2 and 4, not at the end
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # the re-fills moved the holes away from where they started
    first = torch.load(
        f"{whole}/checkpoints/ckpt-00000000.pt", weights_only=True, map_location="cpu"
    )
    assert not torch.equal(first["fills"]["holes"], a["fills"]["holes"])


def test_a_rollback_reloads_the_checkpoints_fills(tmp_path, monkeypatch):
    real, count = train_module.bits_per_dim, iter(range(10**9))

    def loss(*args):  # steps 4 and 5 (0-based calls 4, 5) non-finite: a rollback at the read
        out = real(*args)
        return out * float("nan") if next(count) in {4, 5} else out

    monkeypatch.setattr(train_module, "bits_per_dim", loss)
    loaded = []
    real_load = Fills.load_state_dict
    monkeypatch.setattr(
        Fills, "load_state_dict", lambda self, s, *where: loaded.append(s) or real_load(self, s)
    )
    run = train(tiny_config(tmp_path, "roll", max_bad_steps=2, **COMPLETE), progress=False)
    assert ckpt.load_checkpoint(run)["state"]["rollbacks"] >= 1
    assert loaded, "the rollback did not reload the fills"
    target = torch.load(f"{run}/checkpoints/ckpt-00000003.pt", weights_only=True)["fills"]
    assert torch.equal(loaded[0]["holes"], target["holes"])


def test_complete_needs_holes(tmp_path):
    with pytest.raises(UserError, match="--complete fills holes"):
        tiny_config(tmp_path, "none", square=0, complete=True)
    args = ["train", "--size", "8", "--blocks", "2", "--square", "0", "--complete"]
    proc = run_in_process([*args, "--out", str(tmp_path / "cli")])
    assert "--square" in error_line(proc.returncode, proc.stdout, proc.stderr)


def test_a_run_stopped_during_a_refill_resumes_as_if_it_had_not_stopped(tmp_path, monkeypatch):
    """Ctrl-C in the middle of the refill after step 4: the checkpoint of 4 keeps the old fills
    and counts no refill, and the resumed run makes that refill first."""
    whole = train(tiny_config(tmp_path, "whole", **COMPLETE), progress=False)
    real, calls = Fills.refill, iter(range(10**9))

    def stopped(self, *args, **kwargs):
        if next(calls) == 1:  # the second refill, after step 4
            import missingglow.training.fills as fills_module

            monkeypatch.setattr(fills_module, "invert", interrupt)
        return real(self, *args, **kwargs)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Fills, "refill", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, "part", **COMPLETE), progress=False)
    monkeypatch.undo()
    part = str(tmp_path / "part")
    stopped_at = ckpt.load_checkpoint(part)
    assert stopped_at["iteration"] == 4 and stopped_at["fills"]["refills"] == 1
    train(resume=part, progress=False)
    a, b = ckpt.load_checkpoint(whole), ckpt.load_checkpoint(part)
    assert a["fills"]["refills"] == b["fills"]["refills"] == 2
    assert torch.equal(a["fills"]["holes"], b["fills"]["holes"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_run_extended_past_a_refill_it_ended_on_makes_it(tmp_path):
    whole = train(tiny_config(tmp_path, "whole", **COMPLETE), progress=False)
    part = train(tiny_config(tmp_path, "part", iterations=4, **COMPLETE), progress=False)
    assert ckpt.load_checkpoint(part)["fills"]["refills"] == 1  # none at its last iteration
    train(resume=part, iterations=6, progress=False)
    a, b = ckpt.load_checkpoint(whole), ckpt.load_checkpoint(part)
    assert torch.equal(a["fills"]["holes"], b["fills"]["holes"])
    assert a["fills"]["refills"] == b["fills"]["refills"] == 2


def test_masks_and_squares_do_not_mix(tmp_path):
    with pytest.raises(UserError, match="use one of them"):
        tiny_config(tmp_path, "x", data=str(tmp_path), masks="alpha", square=3)
    assert tiny_config(tmp_path, "y", data=str(tmp_path), masks="alpha", square=0).square == 0


def test_two_gloo_processes_refill_together(tmp_path):
    """Under torchrun the refill's chunks are split over the processes and shared back (the
    loop's broadcasts and sum, over gloo here): the run trains through a refill and records it."""
    run = str(tmp_path / "two")  # the image cache: the module's private_cache
    done = torchrun_train(
        [*TINY_CLI, "--iterations", "3", "--complete", "--refill-every", "2"]
        + ["--refill-steps", "1", "--out", run, "--quiet"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert ckpt.load_checkpoint(run)["fills"]["refills"] == 1
    with open(os.path.join(run, "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f if '"refill"' in line]
    assert len(events) == 1 and 0 <= events[0]["kept"] <= 1
