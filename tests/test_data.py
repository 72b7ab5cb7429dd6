"""Masked datasets (docs/conventions.md §3): folder ingestion, the cache, squares, the held-out
split."""

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys

import pytest
import torch
from PIL import Image

from missingglow.data import cache as cachefile
from missingglow.data import datasets as data
from missingglow.data import masks
from missingglow.errors import UserError
from missingglow.flow.preprocess import quantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 16
GREY = 128 / 255


def _save(img, path, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, **kw)


@pytest.fixture
def folder(tmp_path):
    """Images in every awkward mode, in subfolders, plus files that must be skipped or ignored."""
    d = tmp_path / "imgs"
    _save(Image.new("RGB", (24, 20), (200, 10, 30)), str(d / "a_rgb.png"))
    _save(Image.new("L", (20, 20), 77), str(d / "sub" / "b_grey.png"))
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([10, 220, 40] + [0, 0, 0] * 255)
    _save(pal, str(d / "sub" / "c_palette.png"))
    _save(Image.new("RGBA", (20, 20), (0, 0, 255, 0)), str(d / "sub" / "deep" / "d_rgba.png"))
    _save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), str(d / "e_cmyk.jpg"), quality=95)
    _save(Image.new("I;16", (20, 20), 65535), str(d / "f_16bit.png"))
    _save(Image.new("RGB", (4, 3), (5, 6, 7)), str(d / "g_tiny.bmp"))
    # wide image: the centre crop keeps only the green middle
    wide = Image.new("RGB", (96, 32), (0, 255, 0))
    wide.paste((255, 0, 0), (0, 0, 24, 32))
    wide.paste((0, 0, 255), (72, 0, 96, 32))
    _save(wide, str(d / "h_wide.webp"), lossless=True)
    # bad files
    (d / "i_not_an_image.jpg").write_text("hello, I am text")
    noise = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    _save(noise, str(d / "j_full.jpg"), quality=90)
    blob = (d / "j_full.jpg").read_bytes()
    (d / "k_truncated.jpg").write_bytes(blob[: len(blob) // 2])
    os.symlink(str(d / "gone.png"), str(d / "l_broken_link.png"))
    (d / "notes.txt").write_text("ignored")
    (d / ".hidden.png").write_text("ignored too")
    return d


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def _pixel(cache, name):
    img = cache.images[cache.names.index(name)]
    return tuple(img[S // 2, S // 2].tolist())


def test_folder_modes_converted_bad_files_skipped(folder, cache_dir, capsys):
    cache = cachefile.open_dataset(str(folder), S, cache_dir=cache_dir)
    assert cache.names == [
        "a_rgb.png",
        "e_cmyk.jpg",
        "f_16bit.png",
        "g_tiny.bmp",
        "h_wide.webp",
        "j_full.jpg",
        "sub/b_grey.png",
        "sub/c_palette.png",
        "sub/deep/d_rgba.png",
    ]
    assert cache.images.shape == (9, S, S, 3) and cache.images.dtype == torch.uint8
    assert _pixel(cache, "a_rgb.png") == (200, 10, 30)
    assert _pixel(cache, "sub/b_grey.png") == (77, 77, 77)
    assert _pixel(cache, "sub/c_palette.png") == (10, 220, 40)
    assert _pixel(cache, "sub/deep/d_rgba.png") == (255, 255, 255)  # transparent over white
    assert _pixel(cache, "f_16bit.png") == (255, 255, 255)  # 16-bit scaled, not clipped
    r, g, b = _pixel(cache, "e_cmyk.jpg")
    assert r > 200 and g < 60 and b < 60
    assert _pixel(cache, "g_tiny.bmp") == (5, 6, 7)  # upscaled
    wide = cache.images[cache.names.index("h_wide.webp")]
    # centre crop: of 48×16 after resizing, columns 16..32 (the green middle, 8 px from the edges)
    assert (wide.int() - torch.tensor([0, 255, 0])).abs().max() <= 2
    assert cache.header["upscaled"] == 1
    assert sorted(n for n, _ in cache.skipped) == [
        "i_not_an_image.jpg",
        "k_truncated.jpg",
        "l_broken_link.png",
    ]
    err = capsys.readouterr().err
    summary = [line for line in err.splitlines() if "skipped" in line]
    assert len(summary) == 1
    assert "skipped 3 unreadable files" in summary[0]
    assert "i_not_an_image.jpg (not an image)" in summary[0] and "k_truncated.jpg" in summary[0]
    assert "1 smaller than 16 px were upscaled" in summary[0]


def test_16bit_midgrey_scaled(tmp_path, cache_dir):
    _save(Image.new("I;16", (8, 8), 32768), str(tmp_path / "x" / "mid.png"))
    cache = cachefile.open_dataset(str(tmp_path / "x"), 8, cache_dir=cache_dir, quiet=True)
    assert cache.images[0, 0, 0].tolist() == [128, 128, 128]


def test_second_open_reuses_cache(folder, cache_dir, capsys):
    first = cachefile.open_dataset(str(folder), S, cache_dir=cache_dir)
    inode = os.stat(first.path).st_ino
    second = cachefile.open_dataset(str(folder), S, cache_dir=cache_dir)
    assert second.path == first.path and os.stat(second.path).st_ino == inode
    assert torch.equal(first.images, second.images)
    assert "using the image cache" in capsys.readouterr().err


def test_changed_folder_rebuilds(folder, cache_dir, capsys):
    first = cachefile.open_dataset(str(folder), S, cache_dir=cache_dir, quiet=True)
    _save(Image.new("RGB", (20, 20), (1, 2, 3)), str(folder / "z_new.png"))
    second = cachefile.open_dataset(str(folder), S, cache_dir=cache_dir)
    assert second.path == first.path and len(second) == len(first) + 1
    assert "other source files" in capsys.readouterr().err


def test_pool_gives_same_bytes_as_serial(folder, tmp_path, monkeypatch):
    serial = cachefile.open_dataset(str(folder), S, cache_dir=str(tmp_path / "c1"), quiet=True)
    monkeypatch.setattr(cachefile, "_SERIAL_BELOW", 1)
    pooled = cachefile.open_dataset(
        str(folder), S, cache_dir=str(tmp_path / "c2"), workers=2, quiet=True
    )
    assert pooled.header["workers"] == 2 and serial.header["workers"] == 1
    assert pooled.names == serial.names and torch.equal(pooled.images, serial.images)


@pytest.mark.parametrize("what", ["empty", "no_images", "missing", "file"])
def test_unusable_folder_is_a_user_error(tmp_path, cache_dir, what):
    d = tmp_path / "d"
    if what != "missing":
        d.mkdir()
    if what == "no_images":
        (d / "readme.txt").write_text("x")
    if what == "file":
        d = tmp_path / "plain.txt"
        d.write_text("x")
    with pytest.raises(UserError) as err:
        cachefile.open_dataset(str(d), S, cache_dir=cache_dir, quiet=True)
    expected = {
        "empty": "folder is empty",
        "no_images": "1 other files ignored",
        "missing": "does not exist",
        "file": "not a folder",
    }[what]
    assert expected in str(err.value)


def test_only_bad_images_is_a_user_error(tmp_path, cache_dir):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_text("not a png")
    with pytest.raises(UserError, match="none of the 1 image files"):
        cachefile.open_dataset(str(tmp_path / "d"), S, cache_dir=cache_dir, quiet=True)


def test_unwritable_cache_location(folder, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the image cache.*--cache"):
        cachefile.open_dataset(str(folder), S, cache_dir=str(blocker / "cache"), quiet=True)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_read_only_cache_folder(folder, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write the image cache"):
            cachefile.open_dataset(str(folder), S, cache_dir=str(ro), quiet=True)
    finally:
        ro.chmod(0o700)


def _rewrite_header(path, **changes):
    with open(path, "r+b") as f:
        head = f.read(cachefile.HEADER_BYTES)
        header = json.loads(head[len(cachefile.MAGIC) :].decode())
        header.update(changes)
        f.seek(0)
        f.write((cachefile.MAGIC + json.dumps(header).encode()).ljust(cachefile.HEADER_BYTES, b" "))


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate", "truncated"),
        ("version", "another format version"),
        ("magic", "not a missingglow cache"),
        ("digest", "other source files"),
    ],
)
def test_bad_cache_is_rebuilt_or_refused(folder, cache_dir, capsys, damage, reason):
    good = cachefile.open_dataset(str(folder), S, cache_dir=cache_dir, quiet=True)
    expected = good.images.clone()
    path = good.path
    del good
    if damage == "truncate":
        os.truncate(path, os.path.getsize(path) - 100)
    elif damage == "version":
        _rewrite_header(path, format_version=99)
    elif damage == "magic":
        with open(path, "r+b") as f:
            f.write(b"XXXX")
    elif damage == "digest":
        _rewrite_header(path, digest="0" * 64)
    if damage != "digest":  # a file with the right form but other sources opens on its own
        with pytest.raises(UserError, match=f"{reason}.*missingglow prepare"):
            cachefile.open_cache(path)
    capsys.readouterr()
    rebuilt = cachefile.open_dataset(str(folder), S, cache_dir=cache_dir)
    note = [line for line in capsys.readouterr().err.splitlines() if "rebuilding" in line]
    assert len(note) == 1 and reason in note[0]
    assert torch.equal(rebuilt.images, expected)
    assert cachefile.read_header(path)["format_version"] == cachefile.FORMAT_VERSION


def test_cache_file_as_data(folder, cache_dir):
    built = cachefile.open_dataset(str(folder), S, cache_dir=cache_dir, quiet=True)
    again = cachefile.open_dataset(built.path, S)
    assert torch.equal(again.images, built.images)
    with pytest.raises(UserError, match="--size 16"):
        cachefile.open_dataset(built.path, 32)


CONCURRENT = r"""
import sys
sys.path.insert(0, {root!r})
from missingglow.data import cache as cachefile
c = cachefile.open_dataset(None, 16, cache_dir={cache!r}, synthetic_count=1500, workers=1,
                      rebuild=True, quiet=True)
print(c.path)
"""


def test_two_processes_preparing_at_once_leave_one_good_cache(cache_dir):
    script = CONCURRENT.format(root=ROOT, cache=cache_dir)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    assert os.listdir(cache_dir) == [os.path.basename(paths.pop())]  # no temp files left
    cache = cachefile.open_dataset(None, 16, cache_dir=cache_dir, synthetic_count=1500, quiet=True)
    assert len(cache) == 1500
    assert cache.images[1499].float().std() > 0


# ---------------------------------------------------------------- squares and the split


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return cachefile.open_dataset(
        None, 32, cache_dir=str(tmp_path_factory.mktemp("c")), synthetic_count=400, quiet=True
    )


def test_squares_are_grey_inside_clean_outside(faces):
    ds = data.MaskedImages(faces, square=7, count=2, seed=3, split="all")
    for j in (0, 5, 399):
        masked, clean, pos = ds[j]
        assert masked.shape == clean.shape == (3, 32, 32) and masked.dtype == torch.float32
        assert pos.shape == (2, 2) and pos.dtype == torch.int64
        assert ((pos >= 0) & (pos <= 32 - 7)).all()
        # the squares' pixels by hand: two 7×7 squares at the given corners, overlapping or not
        pixels = {(t + r, l + c) for t, l in pos.tolist() for r in range(7) for c in range(7)}
        by_hand = torch.zeros(1, 32, 32, dtype=torch.bool)
        for r, c in pixels:
            by_hand[0, r, c] = True
        assert torch.equal(masks.square_mask(pos, 7, 32), by_hand)
        inside = by_hand.expand(3, -1, -1)
        assert (masked[inside] == GREY).all()
        assert torch.equal(masked[~inside], clean[~inside])
        assert torch.equal(clean, faces.images[j].permute(2, 0, 1).float() / 255)
        # the grey is exactly 0 after the model's 5-bit quantisation (before the bin centre)
        assert (quantize(masked, 5)[inside] == 0).all()


def test_square_positions_deterministic_and_uniform(faces):
    a = data.MaskedImages(faces, square=5, count=3, seed=11, split="all")
    other = data.MaskedImages(faces, square=5, count=3, seed=12, split="all")
    pa = torch.stack([a[j][2] for j in range(len(a))])
    # the documented formula (data/masks.py), by hand: sha256 of "missingglow-squares:seed:i:j"
    for i in (0, 1, 57, 399):
        for j in range(3):
            d = hashlib.sha256(f"missingglow-squares:11:{i}:{j}".encode()).digest()
            expected = [int.from_bytes(d[:8], "big") % 28, int.from_bytes(d[8:16], "big") % 28]
            assert pa[i, j].tolist() == expected, (i, j)
    assert not torch.equal(pa, torch.stack([other[j][2] for j in range(len(other))]))
    assert pa.min() == 0 and pa.max() == 32 - 5
    assert abs(pa.float().mean().item() - (32 - 5) / 2) < 1.5
    # image i keeps its squares whichever split it is read through
    train = data.MaskedImages(faces, square=5, count=3, seed=11, split="train")
    assert torch.equal(train[10][2], pa[train.indices[10]])


def test_square_positions_same_in_another_process():
    here = [masks.square_positions(7, i, 20, 2, 64).tolist() for i in range(50)]
    code = (
        "import sys, json; sys.path.insert(0, %r); from missingglow.data.masks import "
        "square_positions as p; print(json.dumps([p(7, i, 20, 2, 64).tolist() "
        "for i in range(50)]))" % ROOT
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == here
    # pinned values: a change to the formula changes every experiment's squares
    assert here[0] == [[12, 7], [11, 9]] and here[49] == [[31, 24], [15, 21]]
    assert masks.square_positions(0, 0, 20, 1, 64).tolist() == [[34, 14]]


@pytest.mark.parametrize("square, count", [(0, 1), (8, 0), (0, 0)])
def test_no_squares_gives_clean_image(faces, square, count):
    masked, clean, pos = data.MaskedImages(faces, square=square, count=count)[3]
    assert torch.equal(masked, clean) and pos.shape == (0, 2)


def test_square_as_large_as_image_and_too_large(faces):
    masked, _, pos = data.MaskedImages(faces, square=32, count=1)[0]
    assert pos.tolist() == [[0, 0]] and (masked == GREY).all()
    with pytest.raises(UserError, match="does not fit in a 32×32 image"):
        data.MaskedImages(faces, square=33)
    with pytest.raises(UserError):
        data.MaskedImages(faces, square=4, count=-1)


def test_heldout_split_disjoint_stable_and_seed_independent(faces):
    train = data.MaskedImages(faces, square=4, seed=0, split="train")
    held = data.MaskedImages(faces, square=4, seed=99, split="heldout")
    assert len(held) == 20 and len(train) == 380  # 5 % of 400
    assert not set(train.indices) & set(held.indices)
    assert sorted(train.indices + held.indices) == list(range(400))
    assert data.MaskedImages(faces, seed=5, split="heldout").indices == held.indices
    other = data.MaskedImages(faces, split="heldout", split_seed=1).indices
    assert other != held.indices
    # keyed by names: dropping an image moves at most one other image in or out
    names = faces.names
    kept = set(names[i] for i in data.heldout_indices(names))
    fewer = [n for n in names if n != names[held.indices[0]]]
    kept_fewer = set(fewer[i] for i in data.heldout_indices(fewer))
    assert len(kept - kept_fewer) == 1 and len(kept_fewer - kept) <= 1


def test_heldout_minimum_for_small_sets():
    assert len(data.heldout_indices([f"x{i}" for i in range(40)])) == 16
    assert len(data.heldout_indices([f"x{i}" for i in range(6)])) == 3
    assert data.heldout_indices(["only"]) == []


def test_batch_matches_items_and_pickles(faces):
    ds = data.MaskedImages(faces, square=6, count=2, seed=1)
    js = [0, 7, 3, 100]
    masked, clean, pos = ds.batch(js)
    for b, j in enumerate(js):
        m, c, p = ds[j]
        assert torch.equal(masked[b], m) and torch.equal(clean[b], c) and torch.equal(pos[b], p)
    ds[0]  # the pixels are mapped in this process now
    pickled = pickle.dumps(ds)
    assert len(pickled) < faces.images.numel() // 20  # a path and the names, not the pixels
    again = pickle.loads(pickled)
    assert again.cache._images is None  # mapped again where it is first read
    assert again.indices == ds.indices and len(again) == len(ds)
    for j in range(len(ds)):
        for mine, theirs in zip(again[j], ds[j], strict=True):
            assert torch.equal(mine, theirs), j
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    m, c, p = next(iter(loader))
    assert torch.equal(m, ds.batch([0, 1, 2, 3])[0]) and p.shape == (4, 2, 2)


# ---------------------------------------------------------------- command line, NumPy-free


def test_prepare_command(folder, cache_dir):
    from helpers import run_in_process

    env = {"MISSINGGLOW_CACHE": cache_dir}
    ok = run_in_process(["prepare", "--size", "8", "--data", folder], env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith(cache_dir) and "prepared 9 images" in ok.stderr
    empty = folder / "empty"
    empty.mkdir()
    bad = run_in_process(["prepare", "--size", "8", "--data", empty], env=env, cwd=ROOT)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "Traceback" not in bad.stderr


NUMPY_BLOCKED = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError("numpy blocked", name=name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {root!r})
from missingglow.data import cache as cachefile
from missingglow.data import datasets as data
for src in ({folder!r}, None):
    c = cachefile.open_dataset(src, 8, cache_dir={cache!r}, synthetic_count=300, quiet=True)
    ds = data.MaskedImages(c, square=3, count=1)
    ds[0]; ds.batch([0, 1])
assert "numpy" not in sys.modules
print("numpy-free")
"""


def test_data_path_numpy_free(folder, cache_dir):
    script = NUMPY_BLOCKED.format(root=ROOT, folder=str(folder), cache=cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "numpy-free" in out.stdout, out.stderr


def test_low_detail_synthetic_faces_are_their_own_cache(cache_dir, monkeypatch):
    from missingglow.data import synthetic
    from missingglow.data.cache import synthetic_source
    from missingglow.data.datasets import dataset_of

    # the full-detail source string is unchanged, so caches built before `detail` existed stay valid
    assert synthetic_source(0, 10) == f"synthetic:seed=0,n=10,v={synthetic.VERSION}"
    full = cachefile.open_dataset(None, 8, synthetic_count=12, cache_dir=cache_dir, quiet=True)
    low = cachefile.open_dataset(
        None, 8, synthetic_count=12, cache_dir=cache_dir, synthetic_detail="low", quiet=True
    )
    assert full.path != low.path
    assert bytes(low.images[5].flatten().tolist()) == synthetic.draw(0, 5, 8, "low").tobytes()
    assert bytes(full.images[5].flatten().tolist()) != bytes(low.images[5].flatten().tolist())
    with pytest.raises(UserError, match="synthetic detail must be full or low"):
        cachefile.open_dataset(
            None, 8, synthetic_count=12, cache_dir=cache_dir, synthetic_detail="blurry"
        )
    # a config without the key (a run from before it existed) means the full-detail faces
    monkeypatch.setenv("MISSINGGLOW_CACHE", cache_dir)
    assert dataset_of({"data": None, "image_size": 8, "synthetic_count": 12}).path == full.path
