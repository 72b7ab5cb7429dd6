"""`train --data DIR --masks MASKS`: a folder's own holes (data/holes.py). Masks matched by relative
path (or the images' alpha), taken through the training geometry, cached beside the image cache
and reused until they change; every bad input one UserError naming its file; MaskedImages serving
them; and a tiny training run on them."""

import os
import pickle
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageOps

from missingglow.analysis.impute import heldout_item
from missingglow.data import cache as cachefile
from missingglow.data import datasets
from missingglow.data.holes import holes_path, open_holes
from missingglow.data.masks import square_mask
from missingglow.errors import UserError
from missingglow.training import checkpoint as ckpt
from missingglow.training import loop

from helpers import error_line, run_in_process, tiny_config, tiny_run

S = 8
GREY = 128 / 255


def _save(img, path, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, **kw)


def _stripes(size, seed):
    """An RGB image that is not flat, so a mask's grey is never the image's own value."""
    w, h = size
    return Image.frombytes("RGB", size, bytes((seed * 37 + i * 11) % 251 for i in range(w * h * 3)))


def _mask(size, *boxes):
    img = Image.new("L", size, 0)
    for box in boxes:
        img.paste(255, box)
    return img


def _expected(*cells):
    """A (1, S, S) hole from (rows, cols) slices."""
    hole = torch.zeros((1, S, S), dtype=torch.bool)
    for rows, cols in cells:
        hole[0, rows, cols] = True
    return hole


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py


@pytest.fixture
def world(tmp_path):
    """DATA (a subfolder, JPEG and PNG, 24×16 and 16×16) and MASKS mirroring it, one mask half
    size, one all black, plus a mask with no image (ignored)."""
    data, masks = tmp_path / "data", tmp_path / "masks"
    _save(_stripes((24, 16), 1), str(data / "a" / "x.jpg"), quality=95)
    _save(_stripes((24, 16), 2), str(data / "a" / "y.png"))
    _save(_stripes((16, 16), 3), str(data / "z.png"))
    # 24×16 → 12×8 (each 2×2 box's max) → columns 2..9 kept: mask columns 4..7, rows 0..3 land
    # on model columns 0..1, rows 0..1; the lone pixel (21, 15) lands on column 8 → cropped away,
    # (19, 15) on model (7, 7): one missing source pixel keeps its model pixel missing
    _save(_mask((24, 16), (4, 0, 8, 4), (19, 15, 20, 16)), str(masks / "a" / "x.png"))
    # half size, 12×8: no resize, crop columns 2..9: mask columns 6..8, rows 5..7 → 4..6, 5..7
    _save(_mask((12, 8), (6, 5, 9, 8)), str(masks / "a" / "y.bmp"))
    _save(_mask((16, 16)), str(masks / "z.png"))  # all black: no hole
    _save(_mask((16, 16), (0, 0, 16, 16)), str(masks / "no-such-image.png"))
    return {"data": str(data), "masks": str(masks), "cache": str(tmp_path / "cache")}


def _cache(world, **kw):
    return cachefile.open_dataset(world["data"], S, cache_dir=world["cache"], quiet=True, **kw)


def _hole(holes, name):
    return holes.images[holes.names.index(name)].permute(2, 0, 1).ne(0)


def test_folder_masks_are_matched_by_relative_path_and_taken_through_the_geometry(world):
    cache = _cache(world)
    holes = open_holes(cache, world["masks"])
    assert holes.names == cache.names == ["a/x.jpg", "a/y.png", "z.png"]
    assert (holes.channels, holes.size, holes.header["kind"]) == (1, S, "holes")
    assert set(holes.images.unique().tolist()) == {0, 255}
    assert torch.equal(_hole(holes, "a/x.jpg"), _expected((slice(0, 2), slice(0, 2)), (7, 7)))
    assert torch.equal(_hole(holes, "a/y.png"), _expected((slice(5, 8), slice(4, 7))))
    assert not _hole(holes, "z.png").any()


def test_alpha_below_255_is_missing_and_no_alpha_is_no_hole(tmp_path):
    data = tmp_path / "data"
    img = Image.new("RGBA", (16, 16), (10, 200, 30, 255))
    img.paste((0, 0, 0, 0), (0, 0, 4, 4))  # transparent → model rows/cols 0..1
    img.paste((9, 9, 9, 254), (9, 8, 10, 9))  # barely transparent, one pixel → model (4, 4)
    _save(img, str(data / "cut.png"))
    _save(Image.new("RGBA", (16, 16), (1, 2, 3, 255)), str(data / "opaque.png"))
    _save(_stripes((16, 16), 4), str(data / "plain.jpg"), quality=95)
    cache = cachefile.open_dataset(str(data), S, cache_dir=str(tmp_path / "c"), quiet=True)
    holes = open_holes(cache, "alpha")
    assert torch.equal(_hole(holes, "cut.png"), _expected((slice(0, 2), slice(0, 2)), (4, 4)))
    assert not _hole(holes, "opaque.png").any() and not _hole(holes, "plain.jpg").any()
    # the image cache keeps the transparent pixels as stored (over white), the holes say where
    assert cache.images[cache.names.index("cut.png")][0, 0].tolist() == [255, 255, 255]


def test_a_rotated_photo_takes_the_mask_drawn_on_it_upright(tmp_path):
    # stored 16 wide, 24 high, EXIF orientation 6: shown (and cached) 24 wide, 16 high
    data, masks = tmp_path / "data", tmp_path / "masks"
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(_stripes((16, 24), 5), str(data / "p.png"), exif=exif)
    _save(_mask((24, 16), (4, 0, 8, 4)), str(masks / "p.png"))  # drawn on the upright photo
    cache = cachefile.open_dataset(str(data), S, cache_dir=str(tmp_path / "c"), quiet=True)
    with Image.open(data / "p.png") as img:
        upright = ImageOps.exif_transpose(img).convert("RGB").resize((12, S), Image.LANCZOS)
    cached = cache.images[0].flatten().tolist()
    assert cached == list(upright.crop((2, 0, 2 + S, S)).tobytes())
    holes = open_holes(cache, str(masks))
    assert torch.equal(_hole(holes, "p.png"), _expected((slice(0, 2), slice(0, 2))))


def test_the_cache_records_the_holes_and_a_second_run_reuses_them(world, capsys):
    cache = _cache(world)
    first = open_holes(cache, world["masks"], quiet=False)
    assert first.path == holes_path(cache, "folder:" + os.path.abspath(world["masks"]))
    assert os.path.dirname(first.path) == os.path.dirname(cache.path)
    assert "prepared the holes of 3 images" in capsys.readouterr().err
    stamp = os.stat(first.path).st_mtime_ns
    again = open_holes(_cache(world), world["masks"], quiet=False)
    assert "using the mask cache" in capsys.readouterr().err
    assert os.stat(again.path).st_mtime_ns == stamp
    assert torch.equal(again.images, first.images)


def test_a_changed_mask_folder_rebuilds_its_cache_in_place(world, capsys):
    cache = _cache(world)
    before = open_holes(cache, world["masks"])
    path = os.path.join(world["masks"], "z.png")
    _save(_mask((16, 16), (0, 0, 2, 2)), path)
    os.utime(path, ns=(1, 1))  # a different stamp however fast the file system's clock ticks
    after = open_holes(cache, world["masks"], quiet=False)
    assert "for other source files" in capsys.readouterr().err
    assert after.path == before.path
    assert torch.equal(_hole(after, "z.png"), _expected((0, 0)))
    holes_files = [f for f in os.listdir(world["cache"]) if "-holes-" in f]
    assert holes_files == [os.path.basename(after.path)]


def test_a_changed_image_folder_rebuilds_the_holes_too(world, capsys):
    open_holes(_cache(world), world["masks"])
    os.remove(os.path.join(world["data"], "z.png"))
    holes = open_holes(_cache(world), world["masks"], quiet=False)
    assert "rebuilding it" in capsys.readouterr().err
    assert holes.names == ["a/x.jpg", "a/y.png"]


def test_a_truncated_mask_cache_is_rebuilt(world, capsys):
    cache = _cache(world)
    path = open_holes(cache, world["masks"]).path
    with open(path, "r+b") as f:
        f.truncate(cachefile.HEADER_BYTES + 10)
    holes = open_holes(cache, world["masks"], quiet=False)
    assert "is truncated" in capsys.readouterr().err
    assert torch.equal(_hole(holes, "a/y.png"), _expected((slice(5, 8), slice(4, 7))))


def test_a_mask_cache_is_not_image_data(world):
    path = open_holes(_cache(world), world["masks"]).path
    with pytest.raises(UserError, match="holds an image folder's holes, not its images"):
        cachefile.open_dataset(path, S)


def test_a_pool_of_readers_gives_the_same_holes(world, tmp_path, monkeypatch):
    serial = open_holes(_cache(world), world["masks"])
    monkeypatch.setattr(cachefile, "_SERIAL_BELOW", 1)
    pooled_cache = cachefile.open_dataset(
        world["data"], S, cache_dir=str(tmp_path / "c2"), quiet=True
    )
    pooled = open_holes(pooled_cache, world["masks"], workers=2)
    assert torch.equal(pooled.images, serial.images)


def _break(world, case):
    """Spoil `world` one way; returns (MASKS to pass, the file the message must name)."""
    masks, data = world["masks"], world["data"]
    y = os.path.join(masks, "a", "y.bmp")
    if case == "no mask":
        os.remove(y)
        return masks, os.path.join(masks, "a", "y.png")
    if case == "two masks":
        _save(_mask((12, 8)), os.path.join(masks, "a", "y.png"))
        return masks, "a/y.bmp, a/y.png"
    if case == "unreadable":
        with open(y, "wb") as f:
            f.write(b"not a bitmap")
        return masks, y
    if case == "another shape":
        _save(_mask((12, 12), (0, 0, 2, 2)), y)
        return masks, y
    if case == "odd mode":
        os.remove(y)
        y = os.path.join(masks, "a", "y.jpg")
        _save(Image.new("CMYK", (12, 8), (0, 0, 0, 0)), y, quality=95)
        return masks, y
    if case == "transparent mask":
        os.remove(y)
        y = os.path.join(masks, "a", "y.png")
        _save(Image.new("LA", (12, 8), (255, 0)), y)
        return masks, y
    if case == "all missing":
        _save(_mask((12, 8), (0, 0, 12, 8)), y)
        return masks, y
    if case == "no such folder":
        return masks + "-gone", masks + "-gone"
    if case == "a file":
        return y, y
    if case == "no holes anywhere":
        for name in ("a/x.png", "a/y.bmp"):
            _save(_mask((24, 16) if name.endswith("png") else (12, 8)), os.path.join(masks, name))
        return masks, masks
    if case == "alpha without transparency":
        return "alpha", data
    raise AssertionError(case)


BAD = {
    "no mask": "no mask for the image a/y.png: expected",
    "two masks": "the image a/y.png has 2 masks in",
    "unreadable": "cannot read mask",
    "another shape": "is 12×12 but its image is 24×16, another shape",
    "odd mode": "is a CMYK image; save it as a black-and-white PNG",
    "transparent mask": "has transparent pixels",
    "all missing": "marks every pixel as missing",
    "no such folder": "does not exist; pass --masks with a folder",
    "a file": "is a file; --masks takes a folder",
    "no holes anywhere": "none of the 3 masks in",
    "alpha without transparency": "none of the 3 images in",
}


@pytest.mark.parametrize("case", BAD)
def test_each_bad_input_is_one_user_error_naming_its_file(world, case):
    masks, named = _break(world, case)
    cache = _cache(world)
    with pytest.raises(UserError) as err:
        open_holes(cache, masks)
    message = str(err.value)
    assert BAD[case] in message and named in message, message
    assert "\n" not in message
    assert not [f for f in os.listdir(world["cache"]) if "-holes-" in f or f.startswith(".tmp")]


def test_one_bad_mask_sinks_the_run_and_the_others_are_counted(world):
    _save(_mask((12, 12)), os.path.join(world["masks"], "a", "y.bmp"))
    _save(_mask((2, 2)), os.path.join(world["masks"], "z.png"))  # square image: this one is fine
    _save(_mask((5, 16)), os.path.join(world["masks"], "a", "x.png"))
    with pytest.raises(UserError) as err:
        open_holes(_cache(world), world["masks"])
    message = str(err.value)
    assert message.startswith(f"mask {os.path.join(world['masks'], 'a', 'x.png')} is 5×16")
    assert message.endswith("(and 1 more bad mask of 3)")


def test_missing_masks_are_counted_before_any_is_read(world):
    for name in ("a/y.bmp", "z.png"):
        os.remove(os.path.join(world["masks"], name))
    with pytest.raises(UserError, match=r"a/y\.png.*; 1 other image lacks one too \(of 3\)$"):
        open_holes(_cache(world), world["masks"])


def test_masked_images_serve_the_holes(world):
    cache = _cache(world)
    holes = open_holes(cache, world["masks"])
    items = datasets.MaskedImages(cache, 0, 0, 0, "all", holes=holes)
    js = [0, 1, 2]
    masked, clean, positions = items.batch(js)
    missing = items.missing(js)
    assert positions.shape == (3, 0, 2) and missing.shape == (3, 1, S, S)
    assert torch.equal(missing, holes.images.permute(0, 3, 1, 2).ne(0))
    assert torch.equal(clean, cache.images.permute(0, 3, 1, 2).float() / 255)
    hole = missing.expand_as(masked)
    assert (masked[hole] == GREY).all() and torch.equal(masked[~hole], clean[~hole])
    assert (clean[hole] != GREY).any()  # the grey really is put there
    for j in js:
        one = items[j]
        assert torch.equal(one[0], masked[j]) and torch.equal(one[1], clean[j])
        assert one[2].shape == (0, 2)
    again = pickle.loads(pickle.dumps(items))
    assert torch.equal(again.batch(js)[0], masked)


def test_masked_images_of_a_masks_config_and_its_splits(world):
    cache = _cache(world)
    config = {"masks": world["masks"], "square": 3, "squares": 1, "seed": 5}
    train = datasets.masked_images_of(config, cache, "train")
    held = datasets.masked_images_of(config, cache, "heldout")
    assert sorted(train.indices + held.indices) == [0, 1, 2] and held.indices
    holes = open_holes(cache, world["masks"])
    rows = held.indices
    assert torch.equal(
        held.missing(list(range(len(rows)))), holes.images[rows].permute(0, 3, 1, 2) > 0
    )


def test_masked_images_of_squares_is_bit_identical_to_the_constructor(tmp_path):
    config = tiny_config(tmp_path, "run")
    cache = cachefile.open_dataset(
        None, 8, cache_dir=str(tmp_path / "c"), synthetic_count=48, quiet=True
    )
    for split in ("train", "heldout"):
        ours = datasets.masked_images_of(config.to_dict(), cache, split)
        theirs = datasets.MaskedImages(cache, config.square, config.squares, config.seed, split)
        js = list(range(len(theirs)))
        for a, b in zip(ours.batch(js), theirs.batch(js), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(ours.missing(js), theirs.missing(js))
        assert ours.holes is None


def test_heldout_item_of_a_masks_run_has_the_folder_hole_and_no_original(world):
    cache = _cache(world)
    config = {"data": world["data"], "masks": world["masks"], "square": 3, "seed": 0}
    run = SimpleNamespace(config=config, image_size=S, need_dataset=lambda: None)
    item = heldout_item(run, 0)
    held = datasets.masked_images_of(config, cache, "heldout")
    assert torch.equal(item.mask, held.missing([0])[0]) and item.clean is None
    assert torch.equal(item.image, held[0][0])


def test_heldout_item_of_a_squares_run_is_unchanged(tmp_path):
    cache = cachefile.open_dataset(None, 8, synthetic_count=48, quiet=True)
    config = {"data": None, "synthetic_count": 48, "square": 3, "squares": 2, "seed": 1}
    run = SimpleNamespace(config=config, image_size=8, need_dataset=lambda: None)
    item = heldout_item(run, 2)
    held = datasets.MaskedImages(cache, 3, 2, 1, "heldout")
    masked, clean, positions = held[2]
    assert torch.equal(item.mask, square_mask(positions, 3, 8))
    assert torch.equal(item.image, masked) and torch.equal(item.clean, clean)


def test_a_bad_mask_through_the_command_line_is_one_error_line(world, tmp_path):
    run = tiny_run(str(tmp_path / "run"), str(tmp_path / "tiny-cache"))
    payload = ckpt.load_checkpoint(run)
    payload["config"].update(data=world["data"], masks=world["masks"] + "-gone", image_size=16)
    ckpt.save_checkpoint(run, payload)
    proc = run_in_process(
        ["impute", "heldout:0", "--checkpoint", run, "--method", "alpha", "--out", tmp_path / "o"],
        env={"MISSINGGLOW_CACHE": world["cache"]},
    )
    line = error_line(proc.returncode, proc.stdout, proc.stderr)
    assert f"mask folder {world['masks']}-gone does not exist" in line


@pytest.mark.parametrize("complete", [False, True], ids=["naive", "complete"])
def test_train_with_masks_end_to_end(world, tmp_path, monkeypatch, complete):
    monkeypatch.setenv("MISSINGGLOW_CACHE", world["cache"])
    for i in range(13):  # enough images for a held-out split and a batch of 8
        _save(_stripes((16, 16), 10 + i), os.path.join(world["data"], f"more{i}.png"))
        _save(_mask((16, 16), (i, 0, i + 3, 3)), os.path.join(world["masks"], f"more{i}.png"))
    extra = dict(complete=True, refill_every=2, refill_steps=1) if complete else {}
    config = tiny_config(
        tmp_path, "run", data=world["data"], masks=world["masks"], square=0, iterations=3, **extra
    )
    walks = []
    real_open = datasets.open_holes
    monkeypatch.setattr(
        datasets, "open_holes", lambda *a, **k: walks.append(1) or real_open(*a, **k)
    )
    run = loop.train(config, progress=False)
    assert len(walks) == 1  # the mask folder is walked once at start-up, for both splits
    payload = ckpt.load_checkpoint(run)
    assert payload["iteration"] == 3
    assert payload["config"]["masks"] == world["masks"]
    assert [f for f in os.listdir(world["cache"]) if "-holes-" in f]
    if complete:  # the fills cover exactly the folder's holes
        cache = cachefile.open_dataset(world["data"], 8, quiet=True)
        images = datasets.masked_images_of(payload["config"], cache, "train")
        holes = images.missing(list(range(len(images))))
        assert payload["fills"]["holes"].numel() == 3 * int(holes.sum()) > 0
        assert payload["fills"]["refills"] == 1


@pytest.mark.parametrize("case", ["no mask", "no such folder"])
def test_train_refuses_bad_masks_with_one_error_line(world, tmp_path, case):
    masks, named = _break(world, case)
    args = ["train", "--data", world["data"], "--masks", masks, "--size", "8", "--blocks", "2"]
    args += ["--flows", "2", "--hidden", "8", "--batch", "2", "--iterations", "1"]
    args += ["--eval-every", "1000", "--sample-every", "1000", "--quiet"]
    args += ["--out", str(tmp_path / "run")]
    proc = run_in_process(args, env={"MISSINGGLOW_CACHE": world["cache"]})
    line = error_line(proc.returncode, proc.stdout, proc.stderr)
    assert BAD[case] in line and named in line
