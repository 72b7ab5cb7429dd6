"""Faint squares: grey blended over a picture at an opacity, edges feathered. The banks give what
they claim (the blend, the feather, the placement), the counter finds at full opacity what it
finds on exact squares, and Table 1 prints and writes the counter's recall on them. The recall
table itself is in docs/detector.md (bench/squares.py)."""

import csv
import itertools
import random
from types import SimpleNamespace

import pytest
import torch

from missingglow.analysis import photo_bank, table1
from missingglow.analysis import square_bank as sb
from missingglow.analysis.squares import Square, candidate_sizes, detect
from missingglow.data.masks import GREY

from helpers import env_with_cache, run_in_process, tiny_run

needs_photos = pytest.mark.skipif(
    not photo_bank.available(),
    reason="scikit-image's sample photographs are not installed (the optional extra: "
    "pip install scikit-image)",
)


def test_feather_profiles_by_hand():
    def profile(start, square, feather, size):
        return sb.feather_profile(start, square, feather, size).tolist()

    assert profile(2, 4, 0, 8) == [0, 0, 1, 1, 1, 1, 0, 0]
    assert profile(2, 4, 1, 8) == [0, 0.25, 0.75, 1, 1, 0.75, 0.25, 0]
    # 2 px: a ramp over the four pixels centred on each edge; a 5-px square is 1 in its middle only
    assert profile(3, 5, 2, 11) == [0, 0.125, 0.375, 0.625, 0.875, 1, 0.875, 0.625, 0.375, 0.125, 0]
    assert profile(0, 3, 1, 5) == [0.75, 1, 0.75, 0.25, 0]  # clipped by the border
    for square, feather in itertools.product((4, 5, 12), (0, 1, 2)):  # the area stays K²
        assert sum(profile(6, square, feather, 24)) == pytest.approx(square)


def test_blend_lays_grey_over_each_box_at_the_opacity():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 16, 16, generator=g)
    boxes = [(1, 2, 5), (9, 8, 6)]
    exact = sb.blend(base, boxes, 1.0, 0)
    pasted = base.clone()
    for t, l, k in boxes:
        pasted[:, t : t + k, l : l + k] = GREY
    assert torch.equal(exact, pasted)  # opacity 1, no feather: the exact square
    out = sb.blend(base, boxes, 0.7, 1)
    for y, x in itertools.product(range(16), range(16)):
        alpha = max(
            0.7
            * sb.feather_profile(t, k, 1, 16)[y].item()
            * sb.feather_profile(l, k, 1, 16)[x].item()
            for t, l, k in boxes
        )
        want = (1 - alpha) * base[:, y, x] + alpha * GREY
        torch.testing.assert_close(out[:, y, x], want, rtol=0, atol=1e-6)
    assert torch.equal(out[:, 1:6, 0], base[:, 1:6, 0])  # 2 px left of a box: untouched
    torch.testing.assert_close(out[:, 3, 4], 0.3 * base[:, 3, 4] + 0.7 * GREY)  # its middle


def test_sides_visible_needs_half_of_each_side_off_grey():
    image = torch.full((3, 10, 10), GREY)
    image[:, 0, 2:4] = GREY + 0.1  # 2 of the 4 pixels above box (1, 2, 4)
    image[:, 5, 2:6] = GREY - 0.1  # all 4 below
    image[:, 1:5, 1] = image[:, 1:5, 6] = 0.0  # all of both sides
    assert sb.sides_visible(image, (1, 2, 4), 0.05)
    assert not sb.sides_visible(image, (1, 2, 4), 0.15)  # only the sides below and beside
    image[:, 0, 3] = GREY
    assert not sb.sides_visible(image, (1, 2, 4), 0.05)  # 1 of 4 above
    assert sb.sides_visible(image, (0, 2, 4), 0.05) is False  # the row below it is grey
    assert sb.sides_visible(torch.full((3, 4, 4), GREY), (0, 0, 4), 1.0)  # no side off the border


def check_faint_bank(faint, pictures, size, square, images=12, free=3):
    """faint(seed, opacity, feather, size, square, images, free) against pictures(seed, size,
    square, images, free): the same pictures and boxes at every setting, blended as claimed; boxes
    inside the image, FAINT_GAP apart, visible at the faintest opacity; 1–3 squares in turn, then
    `free` pictures without."""
    bases = pictures(3, size, square, images, free)
    assert len(bases) == images + free
    assert [b[1] for b in bases] == [b[1] for b in pictures(3, size, square, images, free)]
    assert [b[1] for b in pictures(4, size, square, images, free)] != [b[1] for b in bases]
    for index, (base, boxes, info) in enumerate(bases):
        assert base.shape == (3, size, size) and len(boxes) <= 3
        assert (len(boxes) >= 1) == (index < images) and info["count"] == len(boxes)
        for t, l, k in boxes:
            assert k == square and 0 <= t <= size - k and 0 <= l <= size - k
            assert sb.sides_visible(base, (t, l, k), sb.FAINT_EDGE)
        for a, b in itertools.combinations(boxes, 2):
            assert sb._apart(a, b, sb.FAINT_GAP)
    for opacity, feather in ((1.0, 0), (0.5, 2), (0.3, 1)):
        made = list(faint(3, opacity, feather, size, square, images, free))
        assert [m[1] for m in made] == [b[1] for b in bases]
        for (image, boxes, info), (base, _, _) in zip(made, bases, strict=True):
            assert (info["opacity"], info["feather"]) == (opacity, feather)
            assert torch.equal(image, sb.blend(base, boxes, opacity, feather))
            keep = torch.ones(size, size, dtype=torch.bool)
            for t, l, k in boxes:
                f = feather
                core = (slice(None), slice(t + f, t + k - f), slice(l + f, l + k - f))
                far = base[core]
                torch.testing.assert_close(
                    image[core], (1 - opacity) * far + opacity * GREY, rtol=0, atol=1e-6
                )
                keep[max(t - f, 0) : t + k + f, max(l - f, 0) : l + k + f] = False
            assert torch.equal(image[:, keep], base[:, keep])  # untouched beyond the feather


def test_the_faint_faces_are_what_they_say():
    check_faint_bank(sb.faint, sb.faint_faces, 64, 12)
    check_faint_bank(sb.faint, sb.faint_faces, 16, 5)


@needs_photos
def test_the_faint_photographs_are_what_they_say():
    check_faint_bank(photo_bank.faint, photo_bank.faint_crops, 64, 20)
    check_faint_bank(photo_bank.faint, photo_bank.faint_crops, 16, 5)
    crops = photo_bank.faint_crops(3, 64, 12, 6)
    assert [i["look"] for _, _, i in crops] == list(photo_bank.LOOKS) * 2
    for image, _, info in crops:
        if info["look"] != "colour":
            assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_faint_scores_count_per_setting_and_square_free_pictures_once():
    bases = sb.faint_faces(5, 16, 5, 6, 4)
    calls = []

    def corner(batch):  # a 1-px square in every picture's corner
        calls.append(len(batch))
        return [[Square(0, 0, 1, 1.0)] for _ in batch]

    scores = sb.faint_scores(corner, bases, (1.0, 0.5), (0, 2))
    assert set(scores) == {(None, None), (1.0, 0), (1.0, 2), (0.5, 0), (0.5, 2)}
    assert calls == [4] + [6] * 4
    squares = sum(len(b) for _, b, _ in bases)
    for key, score in scores.items():
        if key == (None, None):
            assert score["free_fired"] == (4, 4) and score["squares"] == 0
        else:
            assert score["squares"] == squares and score["found"] == 0
            assert score["extra"] == 6 and score["free_fired"] == (0, 0)
            assert score["recall"] == 0.0

    def nothing(batch):
        return [[] for _ in batch]

    free = sb.faint_scores(nothing, bases, (1.0,), (0,))[None, None]
    assert free["free_fired"] == (0, 4) and free["recall"] == 0.0


@pytest.mark.parametrize("size,square", [(64, 12), (16, 5)])
def test_at_full_opacity_faint_squares_are_the_exact_ones(size, square):
    """At 100 % with hard edges the faint bank is the exact-square bank's case (grey pasted on
    the faces), and the counter finds them as test_squares.py requires of exact squares."""
    bases = sb.faint_faces(11, size, square, 24, 8)
    for (image, boxes, _), (base, _, _) in zip(
        sb.faint(11, 1.0, 0, size, square, 24, 8), bases, strict=True
    ):
        assert torch.equal(image, sb.degrade(base, boxes, "none", random.Random(0)))
    scores = sb.faint_scores(
        lambda b: detect(b, candidate_sizes(square, size)), bases, (1.0,), (0,)
    )
    print(scores)
    assert scores[1.0, 0]["recall"] >= 0.97 and scores[1.0, 0]["extra"] <= 1
    assert scores[None, None]["free_fired"][0] <= 1


@needs_photos
def test_at_full_opacity_faint_photographs_are_counted_like_exact_ones():
    crops = photo_bank.faint_crops(11, 64, 12, 24, 8)
    scores = sb.faint_scores(lambda b: detect(b, candidate_sizes(12, 64)), crops, (1.0,), (0,))
    print(scores)
    assert scores[1.0, 0]["recall"] >= 0.98 and scores[1.0, 0]["extra"] == 0
    assert scores[None, None]["free_fired"][0] == 0


# --- Table 1 carries the recall ----------------------------------------------------------------

RECALL = {
    "size": 16,
    "square": 5,
    "square_given": True,
    "squares": 27,
    "free_fired": (1, 12),
    "recall": {
        (o, f): round(o * (1 - f / 4), 4)
        for o in table1.RECALL_OPACITIES
        for f in table1.RECALL_FEATHERS
    },
}


def test_the_recall_lines_read_like_table1():
    lines = table1.format_recall(RECALL).splitlines()
    assert "16 px, K = 5, 27 squares, seed 7" in lines[0]
    assert lines[1].split() == ["opacity", "100", "%", "85", "%", "70", "%", "50", "%"]
    assert lines[2].split() == ["hard", "edges", "1.00", "0.85", "0.70", "0.50"]
    assert lines[3].split() == ["edges", "feathered", "2", "px", "0.50", "0.42", "0.35", "0.25"]
    assert lines[4] == "square-free faces with a false square: 1 of 12"
    assert "docs/detector.md" in lines[5]
    assert "all sizes searched" in table1.format_recall({**RECALL, "square_given": False})
    assert table1.recall_note(RECALL).endswith("100 % 1.00 · 85 % 0.85 · 70 % 0.70 · 50 % 0.50")


def test_detector_recall_is_measured_at_the_runs_sizes():
    recall = table1.detector_recall(SimpleNamespace(square=5, image_size=16))
    assert (recall["size"], recall["square"], recall["square_given"]) == (16, 5, True)
    assert set(recall["recall"]) == set(
        itertools.product(table1.RECALL_OPACITIES, table1.RECALL_FEATHERS)
    )
    assert recall["squares"] == sum(len(b) for _, b, _ in sb.faint_faces(7, 16, 5, 24))
    assert recall["free_fired"][1] == 12
    assert recall["recall"][1.0, 0] >= 0.97
    assert recall == table1.detector_recall(SimpleNamespace(square=5, image_size=16))
    # a run without squares (or an imported one without --square): the default square, scaled
    assert table1.recall_square(SimpleNamespace(square=0), 16) == 5
    assert table1.recall_square(SimpleNamespace(square=None), 64) == 20
    assert table1.recall_square(SimpleNamespace(square=7), 64) == 7


def test_table1_files_carry_the_recall(tmp_path):
    row = {
        "t": 0.5,
        "n": 2,
        "finite": 2,
        "nonfinite": 0,
        "counts": [2, 0, 0, 0, 0],
        "shares": [100.0, 0, 0, 0, 0],
        "E": 0.0,
        "theory": 0.25,
    }
    path = table1.table1_csv(tmp_path / "t.csv", [row, {**row, "t": 1.0}], RECALL)
    with open(path) as f:
        table = list(csv.DictReader(f))
    assert [r["t"] for r in table] == ["0.5", "1.0"]
    for r in table:
        assert r["recall_square"] == "5" and r["recall_squares"] == "27"
        assert r["recall_85pct_feather0"] == "0.8500" and r["recall_50pct_feather2"] == "0.2500"
        assert (r["recall_free_fired"], r["recall_free_faces"]) == ("1", "12")
    plain = table1.table1_csv(tmp_path / "plain.csv", [row])
    with open(plain) as f:
        assert not any(name.startswith("recall") for name in next(csv.reader(f)))
    assert table1.table1_plot([row], RECALL).tobytes() != table1.table1_plot([row]).tobytes()


def test_squares_command_prints_and_writes_the_recall(tmp_path):
    run = tiny_run(str(tmp_path / "run"), str(tmp_path / "cache"))
    result = run_in_process(
        ["squares", "--checkpoint", run, "-t", "0.5", "-n", "2", "--out", tmp_path / "t1"],
        env=env_with_cache(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("share of faint squares"))
    assert "16 px, K = 4" in lines[start]  # the tiny run's sizes
    assert lines[start + 2].startswith("hard edges")
    assert lines[start + 4].startswith("square-free faces with a false square")
    with open(tmp_path / "t1" / "table1.csv") as f:
        table = list(csv.DictReader(f))
    assert table[0]["recall_square"] == "4"
    printed = [float(v) for v in lines[start + 2].split()[2:]]
    written = [
        float(table[0][f"recall_{100 * o:.0f}pct_feather0"]) for o in table1.RECALL_OPACITIES
    ]
    assert printed == pytest.approx(written, abs=0.005)
