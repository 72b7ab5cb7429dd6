"""experiments/study.py on a tiny model: milestones are measured once, runs resume, the report
draws."""

import json
import math
import os

import pytest
import torch

from helpers import load_script


@pytest.fixture
def study(monkeypatch, tmp_path):
    module = load_script("experiments/study.py", "study")
    tiny = dict(
        module.base_config(),
        image_size=8,
        blocks=2,
        flows=1,
        hidden=8,
        batch=8,
        synthetic_count=120,
        square=3,
        heldout_images=8,
    )
    monkeypatch.setattr(module, "base_config", lambda: dict(tiny))
    monkeypatch.setattr(module, "SAMPLES_PER_T", 4)
    monkeypatch.setattr(module, "BPD_IMAGES", 8)
    monkeypatch.setattr(module, "IMPUTE_IMAGES", 4)
    monkeypatch.setenv("MISSINGGLOW_CACHE", str(tmp_path / "cache"))
    return module


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def by_hand(study, kept):
    """Held-out bits/dim and the grey fill's RMSE inside the square for a kept checkpoint, from
    the images and the model alone: what a milestone's record must say."""
    from missingglow.analysis.runs import open_run
    from missingglow.data.datasets import MaskedImages, dataset_of
    from missingglow.seeding import generator

    run = open_run(kept)
    c = run.config
    items = MaskedImages(dataset_of(c), c["square"], c["squares"], c["seed"], "heldout")
    masked, clean, positions = items.batch(list(range(study.BPD_IMAGES)))
    noise = torch.rand(masked.shape, generator=generator(c["seed"], "eval-noise")) / 32
    dims = masked[0].numel()

    def bits(images):
        x = torch.floor(images * 255 / 8) / 32 - 0.5 + noise
        with torch.no_grad():
            return (-run.model.log_prob(x) / (dims * math.log(2)) + 5).double().mean().item()

    inside = torch.zeros(masked.shape, dtype=torch.bool)
    for b, ((top, left),) in enumerate(positions.tolist()):
        inside[b, :, top : top + c["square"], left : left + c["square"]] = True
    n = study.IMPUTE_IMAGES
    # images are scored as their 5-bit bins' 8-bit representatives, 8·bin + 4 (flow/preprocess)
    grey = (torch.floor(masked[:n] * 255 / 8) - torch.floor(clean[:n] * 255 / 8)) * 8 / 255
    rmse = grey[inside[:n]].double().pow(2).mean().sqrt().item()
    return {"masked": bits(masked), "clean": bits(clean)}, rmse


def test_milestones_are_measured_once_and_runs_resume(study, tmp_path):
    root = str(tmp_path / "runs")
    study.main(["run", "base", "--until", "4", "--every", "2", "--root", root])
    log = os.path.join(root, "base", "study.jsonl")
    first = records(log)
    assert [r["iter"] for r in first] == [2, 4]
    assert sorted(os.listdir(os.path.join(root, "base", "kept"))) == [
        "ckpt-00000002.pt",
        "ckpt-00000004.pt",
    ]
    methods = [
        (m, a)
        for m in ("flow", "flow + keep observed", f"flow + keep observed ×{study.KEEP_ITERATIONS}")
        for a in study.ALPHAS
    ]
    methods += [(m, None) for m in ("grey fill", "mean-colour fill", "harmonic fill")]
    for r in first:
        assert set(r) >= {"train", "heldout", "table1", "impute", "train_seconds", "s_per_iter"}
        bpd, grey_rmse = by_hand(
            study, os.path.join(root, "base", "kept", f"ckpt-{r['iter']:08d}.pt")
        )
        assert r["heldout"]["masked"] == pytest.approx(bpd["masked"], abs=1e-5)
        assert r["heldout"]["clean"] == pytest.approx(bpd["clean"], abs=1e-5)
        assert r["heldout"]["gap"] == pytest.approx(bpd["masked"] - bpd["clean"], abs=2e-5)
        assert [row["t"] for row in r["table1"]] == list(study.TEMPERATURES)
        assert all(row["finite"] + row["nonfinite"] == study.SAMPLES_PER_T for row in r["table1"])
        rows = {(row["method"], row["alpha"]): row for row in r["impute"]}
        assert set(methods) <= set(rows) and ("invert", None) in rows
        assert rows[("grey fill", None)]["rmse_in"] == pytest.approx(grey_rmse, abs=1e-5)
        for alpha in study.ALPHAS:  # keeping the observed pixels leaves them as they were
            assert rows[("flow + keep observed", alpha)]["rmse_out"] == 0
            assert rows[("flow", alpha)]["rmse_out"] > 0
    # two milestones of one run: the model changed between them, the data did not
    assert first[0]["heldout"] != first[1]["heldout"]
    grey = [next(row for row in r["impute"] if row["method"] == "grey fill") for r in first]
    assert grey[0] == grey[1]
    study.main(["run", "base", "--until", "4", "--every", "2", "--root", root])
    assert records(log) == first  # nothing measured twice
    study.main(["run", "base", "--until", "6", "--every", "2", "--root", root])
    again = records(log)
    assert [r["iter"] for r in again] == [2, 4, 6]
    assert again[2]["train_seconds"] >= again[1]["train_seconds"]


def test_a_torn_last_line_is_measured_again(study, tmp_path):
    root = str(tmp_path / "runs")
    study.main(["run", "additive", "--until", "2", "--every", "2", "--root", root])
    log = os.path.join(root, "additive", "study.jsonl")
    with open(log, "a") as f:
        f.write('{"iter": 4, "trunc')
    assert list(study.measured(os.path.join(root, "additive"))) == [2]


def test_report_writes_curves_and_tables(study, tmp_path):
    root, out = str(tmp_path / "runs"), str(tmp_path / "report")
    study.main(["run", "base", "--until", "4", "--every", "2", "--root", root])
    study.main(["report", "--root", root, "--out", out, "--md", str(tmp_path / "t.md")])
    assert sorted(os.listdir(out)) == [
        "gap-vs-iterations.png",
        "square-free-vs-t-base.png",
        "train-gap-vs-iterations.png",
    ]
    text = (tmp_path / "t.md").read_text()
    assert "| base | base (small preset) | 4 |" in text


def test_every_lever_makes_a_valid_config(tmp_path):
    study = load_script("experiments/study.py", "study_real")
    assert study.run_config("base", str(tmp_path))["synthetic_detail"] == "full"  # not the preset's
    for name, lever in study.LEVERS.items():
        config = study.run_config(name, str(tmp_path))
        for key, value in lever["change"].items():
            assert config[key] == value, (name, key)


def test_the_control_counts_with_the_base_detector(study, tmp_path):
    root = str(tmp_path / "runs")
    study.main(["run", "clean", "--until", "2", "--every", "2", "--root", root])
    (record,) = records(os.path.join(root, "clean", "study.jsonl"))
    assert record["heldout"]["gap"] == 0  # no square: masked and clean are the same images
    assert len(record["table1"]) == len(study.TEMPERATURES)


def test_a_run_held_by_a_live_process_is_skipped(study, tmp_path):
    root = str(tmp_path / "runs")
    os.makedirs(os.path.join(root, "base"))
    with open(os.path.join(root, "base", ".lock"), "w") as f:
        f.write(str(os.getppid()))  # alive
    study.main(["run", "base", "--until", "2", "--every", "2", "--root", root])
    assert not os.path.exists(os.path.join(root, "base", "study.jsonl"))
    with open(os.path.join(root, "base", ".lock"), "w") as f:
        f.write("999999999")  # no such process: taken over
    study.main(["run", "base", "--until", "2", "--every", "2", "--root", root])
    assert [r["iter"] for r in records(os.path.join(root, "base", "study.jsonl"))] == [2]
    assert not os.path.exists(os.path.join(root, "base", ".lock"))


def test_sheet_puts_kept_checkpoints_side_by_side(study, tmp_path):
    from PIL import Image

    root, out = str(tmp_path / "runs"), str(tmp_path / "sheet.png")
    study.main(["run", "base", "--until", "2", "--every", "2", "--root", root])
    study.main(["run", "clean", "--until", "2", "--every", "2", "--root", root])
    study.main(["sheet", "base@2", "clean@2", "--root", root, "--out", out, "-n", "3"])
    with Image.open(out) as image:
        assert image.size[0] > 2 * 3 * 48
    with pytest.raises(SystemExit, match="no kept checkpoint"):
        study.main(["sheet", "base@4", "--root", root, "--out", out])


def test_the_low_detail_lever_is_measured_on_its_own_faces(study, tmp_path, monkeypatch):
    caches = []
    real = study.MaskedImages
    monkeypatch.setattr(
        study, "MaskedImages", lambda cache, *a: caches.append(cache.path) or real(cache, *a)
    )
    study.main(["run", "simple", "--until", "2", "--every", "2", "--root", str(tmp_path / "runs")])
    assert caches and all("detaillow" in path for path in caches)
