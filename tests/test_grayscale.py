"""Grayscale data: a folder whose every image is grey trains a one-channel model, and sampling,
imputation, evaluation and the analysis commands carry that through (docs/conventions.md §1, §3);
a mixed folder trains in RGB as before."""

import os

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from missingglow.cli import cli as main
from missingglow.data.cache import ImageCache, open_dataset, read_header
from missingglow.data.synthetic import draw_face
from missingglow.flow.preprocess import from_model, luma, match_channels, to_model
from missingglow.training import checkpoint as ckpt
from missingglow.training.config import resolve_config
from missingglow.training.loop import train

TINY = dict(
    image_size=8,
    blocks=2,
    flows=2,
    hidden=8,
    batch=8,
    square=3,
    iterations=4,
    lr=1e-3,
    warmup=2,
    eval_every=2,
    sample_every=1000,
    checkpoint_every=1000,
    log_every=1,
    heldout_images=8,
)


def grey_folder(path, n=40, size=8, colour=0):
    """n synthetic faces saved as 8-bit grey PNGs, the first `colour` of them left in colour."""
    os.makedirs(path, exist_ok=True)
    for i in range(n):
        face = draw_face(0, i, size)
        (face if i < colour else face.convert("L")).save(os.path.join(path, f"{i:03d}.png"))
    return str(path)


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("grey")
    said = []
    config = resolve_config(
        dict(TINY, data=grey_folder(base / "faces"), out=str(base / "run")), has_gpu=False
    )[0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MISSINGGLOW_CACHE", str(base / "cache"))
        run_dir = train(config, progress=False, say=said.append)
    return run_dir, said, base


def test_luma_keeps_grey_exact_and_matches_pillow(gen):
    rgb = torch.randint(0, 256, (2, 3, 5, 7), generator=gen, dtype=torch.uint8)
    expected = torch.stack(
        [
            torch.frombuffer(
                bytearray(
                    Image.frombytes("RGB", (7, 5), bytes(img.permute(1, 2, 0).flatten().tolist()))
                    .convert("L")
                    .tobytes()
                ),
                dtype=torch.uint8,
            ).view(1, 5, 7)
            for img in rgb
        ]
    )
    assert torch.equal((luma(rgb.float() / 255) * 255).round().to(torch.uint8), expected)
    grey = rgb[:, :1].float().div(255).expand(-1, 3, -1, -1)
    assert torch.equal(luma(grey), grey[:, :1])
    # through a one-channel model's space and back: what an RGB model gives, as RGB
    one, three = to_model(grey, 5, channels=1), to_model(grey, 5, channels=3)
    assert one.shape == (2, 1, 5, 7) and torch.equal(from_model(one, 5), from_model(three, 5))
    with pytest.raises(ValueError, match="2-channel"):
        match_channels(torch.zeros(1, 2, 4, 4), 3)


def test_the_cache_records_whether_every_image_is_grey(tmp_path):
    grey = open_dataset(grey_folder(tmp_path / "grey", 6), 8, cache_dir=tmp_path / "c", quiet=True)
    mixed = open_dataset(
        grey_folder(tmp_path / "mixed", 6, colour=1), 8, cache_dir=tmp_path / "c", quiet=True
    )
    assert grey.grayscale is True and mixed.grayscale is False
    assert read_header(grey.path)["grayscale"] is True
    # a cache written before the field existed is scanned instead
    header = dict(read_header(grey.path))
    del header["grayscale"]
    assert ImageCache(grey.path, header).grayscale is True
    assert (
        ImageCache(
            mixed.path, {k: v for k, v in read_header(mixed.path).items() if k != "grayscale"}
        ).grayscale
        is False
    )


def test_a_grey_folder_trains_one_channel(grey_run):
    run_dir, said, _ = grey_run
    payload = ckpt.load_checkpoint(run_dir)
    assert payload["config"]["channels"] == 1
    assert payload["model_config"]["in_channels"] == 1
    assert payload["model"]["blocks.0.flows.0.actnorm.loc"].shape[1] == 4  # 1 channel squeezed
    assert any("grayscale: training a one-channel model" in line for line in said)


def test_a_mixed_folder_trains_rgb(tmp_path, monkeypatch):
    monkeypatch.setenv("MISSINGGLOW_CACHE", str(tmp_path / "cache"))
    said = []
    config = resolve_config(
        dict(
            TINY,
            iterations=1,
            data=grey_folder(tmp_path / "f", colour=1),
            out=str(tmp_path / "run"),
        ),
        has_gpu=False,
    )[0]
    train(config, progress=False, say=said.append)
    assert ckpt.load_checkpoint(tmp_path / "run")["model_config"]["in_channels"] == 3
    assert not any("grayscale" in line for line in said)


def test_a_run_from_before_keeps_three_channels_on_resume(tmp_path, monkeypatch):
    """A checkpoint whose config has no `channels` was trained in RGB, even on a grey folder."""
    monkeypatch.setenv("MISSINGGLOW_CACHE", str(tmp_path / "cache"))
    config = resolve_config(
        dict(
            TINY,
            iterations=2,
            channels=3,
            out=str(tmp_path / "run"),
            data=grey_folder(tmp_path / "f"),
        ),
        has_gpu=False,
    )[0]
    run_dir = train(config, progress=False)
    path = ckpt.resolve(run_dir)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["channels"]
    torch.save(payload, path)
    train(resume=run_dir, iterations=3, progress=False)
    resumed = ckpt.load_checkpoint(run_dir)
    assert resumed["iteration"] == 3 and resumed["model_config"]["in_channels"] == 3


def is_grey_rgb(path):
    with Image.open(path) as img:
        r, g, b = img.convert("RGB").split()
        return img.mode == "RGB" and r.tobytes() == g.tobytes() == b.tobytes()


def cli(*args, env):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_analysis_commands_carry_one_channel_through(grey_run):
    run_dir, _, base = grey_run
    env = {"MISSINGGLOW_CACHE": str(base / "cache")}
    out = base / "out"
    cli("sample", "--checkpoint", run_dir, "-n", "4", "--out", str(out / "s.png"), env=env)
    assert is_grey_rgb(out / "s.png")
    cli(
        "squares",
        "--checkpoint",
        run_dir,
        "-t",
        "0.5",
        "-n",
        "4",
        "--out",
        str(out / "t1"),
        env=env,
    )
    colour = base / "colour.png"
    draw_face(1, 1, 8).save(colour)
    text = cli(
        "impute",
        str(colour),
        "heldout:0",
        "--checkpoint",
        run_dir,
        "--square",
        "2,2,3",
        "--keep-observed",
        "--method",
        "alpha",
        "--alpha",
        "0.6",
        "--out",
        str(out / "imp"),
        env=env,
    )
    assert "one channel" in text
    assert all(is_grey_rgb(p) for p in (out / "imp").glob("*.png"))
    cli(
        "impute",
        "heldout:0",
        "heldout:1",
        "--checkpoint",
        run_dir,
        "--steps",
        "3",
        "--out",
        str(out / "inv"),
        env=env,
    )
    assert is_grey_rgb(out / "inv" / "heldout-0-restored.png")
    cli(
        "evaluate",
        "--checkpoint",
        run_dir,
        "-n",
        "4",
        "--steps",
        "2",
        "--alpha",
        "0.6",
        "--iterations",
        "1",
        "--out",
        str(out / "ev"),
        env=env,
    )
    text = cli(
        "latent-norms", "--checkpoint", run_dir, "-n", "4", "--out", str(out / "ln"), env=env
    )
    assert "D = 64," in text  # 1 × 8 × 8 numbers per image, not 3 × 8 × 8
