"""The grey-square detector: exact on known squares, silent on natural grey content.

Two banks: the synthetic one (analysis/square_bank.py) puts 0–3 squares on synthetic faces, colour
gradients, textures, noise, smooth fields and random-shape scenes, then blurs, adds noise, tints
the squares or quantises to 5 bits; the photo bank (analysis/photo_bank.py) puts them on 64-px crops
of scikit-image's sample photographs, colour and grayscale (skipped without scikit-image). Their
scores on the full banks are in docs/detector.md (bench/squares.py); these tests run smaller
cuts, on seeds the counter was not tuned on, with thresholds a little below what it scores there,
so that a real regression fails.
"""

import itertools

import pytest
import torch

from missingglow.analysis import photo_bank
from missingglow.analysis.square_bank import grey_content, iou, match, score
from missingglow.analysis.squares import (
    Square,
    all_sizes,
    candidate_sizes,
    count,
    detect,
)
from missingglow.data.masks import GREY
from missingglow.render.sheets import outline

needs_photos = pytest.mark.skipif(
    not photo_bank.available(),
    reason="scikit-image's sample photographs are not installed (the optional extra: "
    "pip install scikit-image)",
)


def face(size=64, index=3):
    from missingglow.data.images import from_pil
    from missingglow.data.synthetic import draw_face

    return from_pil(draw_face(0, index, size))


def test_finds_an_exact_square_where_it_is():
    image = face()
    image[:, 10:22, 30:42] = GREY
    found = detect(image, candidate_sizes(12, 64))
    assert [s.box() for s in found] == [(10, 30, 12)]


def test_counts_zero_to_three_squares_on_a_face():
    boxes = [(2, 2, 12), (40, 8, 12), (30, 44, 12)]
    for k in range(4):
        image = face(index=7)
        for t, l, s in boxes[:k]:
            image[:, t : t + s, l : l + s] = GREY
        found = detect(image, candidate_sizes(12, 64))
        assert match(found, boxes[:k]) == (k, 0, 0), (k, found)


def test_accuracy_on_the_bank_at_64px():
    result = score(
        lambda im: detect(im, candidate_sizes(12, 64)), seed=5, size=64, square=12, per_cell=1
    )
    print({k: v for k, v in result.items() if k != "misses"})
    assert result["precision"] >= 0.99
    assert result["recall"] >= 0.97
    assert result["count_accuracy"] >= 0.97
    assert result["false_on_grey"] == []


def test_accuracy_on_the_bank_at_16px_small_preset_scale():
    result = score(
        lambda im: detect(im, candidate_sizes(5, 16)), seed=5, size=16, square=5, per_cell=1
    )
    print({k: v for k, v in result.items() if k != "misses"})
    assert result["precision"] >= 0.97
    assert result["recall"] >= 0.88
    assert result["count_accuracy"] >= 0.88


def test_silent_on_natural_grey_content():
    """Grey backgrounds, bands, rectangles, discs, ramps, half-images and a square of another size
    are grey but not a K×K square."""
    for size, k in ((64, 12), (64, 20)):
        for image, what in grey_content(seed=3, size=size, square=k):
            assert detect(image, candidate_sizes(k, size)) == [], what


def test_blur_noise_and_tint_are_tolerated():
    g = torch.Generator().manual_seed(0)
    image = face(index=11)
    image[:, 20:32, 20:32] = torch.tensor([0.55, 0.47, 0.5])[:, None, None]  # tinted
    image = torch.nn.functional.avg_pool2d(image[None], 3, 1, 1, count_include_pad=False)[0]
    image = (image + 0.03 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    found = detect(image, candidate_sizes(12, 64))
    assert match(found, [(20, 20, 12)]) == (1, 0, 0), found


def test_non_finite_images_are_reported_not_counted():
    batch = torch.stack([face(), face()])
    batch[1, 0, 3, 3] = float("nan")
    found = detect(batch, candidate_sizes(12, 64))
    assert found[0] == [] and found[1] is None
    assert count(batch, [12]) == [0, None]


def test_sizes_iou_and_outline():
    assert candidate_sizes(12, 64) == [10, 11, 12, 13, 14]
    assert candidate_sizes(5, 16) == [4, 5, 6]
    assert all_sizes(16) == [4, 5, 6, 7, 8]
    assert iou((0, 0, 4), (0, 0, 4)) == 1 and iou((0, 0, 4), (10, 10, 4)) == 0
    image = torch.zeros(3, 8, 8)
    drawn = outline(image, [Square(2, 2, 3, 1.0)])
    assert drawn[0, 1, 1] == 1 and drawn[0, 5, 5] == 1  # the frame lies just outside
    assert drawn[:, 2:5, 2:5].abs().sum() == 0  # the square itself stays visible


def test_match_one_to_one_by_iou():
    """match() on its own, with hand-made boxes: each true box is claimed at most once, by the
    first detection (best first) whose best remaining true box overlaps it by IoU >= min_iou."""
    box = (0, 0, 10)
    assert match([box], [box]) == (1, 0, 0)  # a true positive
    assert match([(30, 30, 10)], []) == (0, 1, 0)  # a false positive
    assert match([], [box]) == (0, 0, 1)  # a false negative
    assert match([Square(0, 0, 10, 1.0)], [box]) == (1, 0, 0)  # Square or tuple
    assert match([box, (1, 1, 10)], [box]) == (1, 1, 0)  # one truth, two claims
    assert match([box], [box, (0, 1, 10)]) == (1, 0, 1)  # one claim, two truths
    assert iou((0, 0, 10), (0, 3, 10)) == 70 / 130  # 0.54: matches
    assert match([(0, 3, 10)], [box]) == (1, 0, 0)
    assert match([(0, 3, 10)], [box], min_iou=0.6) == (0, 1, 1)
    assert match([(0, 4, 10)], [box]) == (0, 1, 1)  # 60 / 140 = 0.43
    # each detection takes the best of the true boxes left (not the first that overlaps enough):
    # IoU (10 - d) / (10 + d) for boxes d pixels apart, so 0.82, 0.67, 0.54, 0.43 for d = 1…4
    a, b = (0, 10, 10), (0, 13, 10)
    assert match([(0, 12, 10), (0, 8, 10)], [a, b]) == (2, 0, 0)
    # and greedily, in the order given (best first), not the best assignment overall: the first
    # takes b, which leaves the second (0.82 to b, 0.43 to a) with none
    assert match([(0, 12, 10), (0, 14, 10)], [a, b]) == (1, 1, 1)
    assert match([(0, 14, 10), (0, 12, 10)], [a, b]) == (2, 0, 0)


SLOTS = [(2, 2), (2, 26), (2, 50), (26, 2), (26, 26), (26, 50), (50, 2), (50, 26), (50, 50)]


def squares_on_faces(counts, k=12, size=64):
    """A batch of faces carrying counts[i] exact K-px squares each (on a 3×3 grid of places, 12 px
    apart), with a NaN image for each None."""
    images = []
    for i, c in enumerate(counts):
        image = face(size, index=20 + i)
        if c is None:
            image[:] = float("nan")
        else:
            for t, l in SLOTS[:c]:
                image[:, t : t + k, l : l + k] = GREY
        images.append(image)
    return torch.stack(images)


def test_table1_counts_buckets_and_E_from_known_squares(monkeypatch):
    """Table 1 through square_table, on samples with known numbers of squares (0–6 and a
    non-finite one): counts per bucket with 4+ holding 4, 5 and 6, shares over the finite samples,
    and E = the mean of the true counts (3.0 here, not the 2.57 that capping at 4 would give)."""
    from types import SimpleNamespace

    from missingglow.analysis import table1

    batches = {
        0.5: squares_on_faces([0, 1, 2, 3, 4, 5, 6, None]),
        1.0: squares_on_faces([4, 4, 1, 0]),
    }
    assert count(batches[0.5], candidate_sizes(12, 64)) == [0, 1, 2, 3, 4, 5, 6, None]
    monkeypatch.setattr(table1, "sample_images", lambda run, n, t, seed, batch: batches[t])
    run = SimpleNamespace(square=12, image_size=64)
    low, high = table1.square_table(run, [0.5, 1.0], n=8, seed=0)
    assert low["counts"] == [1, 1, 1, 1, 3] and low["finite"] == 7 and low["nonfinite"] == 1
    assert low["E"] == pytest.approx(21 / 7)
    assert low["shares"] == pytest.approx([100 / 7] * 4 + [300 / 7])
    assert high["counts"] == [1, 1, 0, 0, 2] and high["E"] == pytest.approx(9 / 4)
    assert low["theory"] == 0.25 and high["theory"] == 1.0
    text = table1.format_table1([low, high])
    assert [line.split()[-2:] for line in text.splitlines() if line.startswith("4+")] == [
        ["43", "50"]
    ]
    assert table1.tally([[], None, [Square(0, 0, 4, 1.0)] * 7])["E"] == 3.5


@pytest.fixture(scope="module")
def photos():
    """The photo bank's test cut, seed 2 (the counter was tuned on seed 0; the docs' numbers are
    seed 7): 2 images per look × K × count 1–3 and 50 square-free crops, exact and degraded."""
    exact = list(photo_bank.bank(2, 2, 50))
    return exact, list(photo_bank.degraded(2, 2, 50, images=exact))


@needs_photos
def test_photo_bank_is_what_it_says(photos):
    exact, degraded = photos
    again = itertools.islice(photo_bank.bank(2, 2, 50), 5)  # the same bank, built afresh
    assert [i for _, _, i in exact[:5]] == [i for _, _, i in again]
    assert len(exact) == 3 * 4 * 3 * 2 + 50
    for image, boxes, info in exact:
        assert image.shape == (3, 64, 64) and len(boxes) == info["count"] <= 3
        if info["look"] != "colour":
            assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        for t, l, k in boxes:
            assert k == info["K"] in photo_bank.SQUARES and 0 <= t <= 64 - k and 0 <= l <= 64 - k
            assert (image[:, t : t + k, l : l + k] == GREY).all()
        for a, (t, l, k) in enumerate(boxes):  # never touching: GAP pixels between
            for t2, l2, k2 in boxes[a + 1 :]:
                g = photo_bank.GAP
                assert t + k + g <= t2 or t2 + k2 + g <= t or l + k + g <= l2 or l2 + k2 + g <= l
    looks = {i["look"] for _, _, i in exact}
    ways = {w for _, _, i in exact for w in i["ways"]}
    assert looks == set(photo_bank.LOOKS) and ways == set(photo_bank.PLACES)
    assert sum(not b for _, b, _ in exact) == 50
    assert [b for _, b, _ in degraded] == [b for _, b, _ in exact]
    assert {i["degradation"] for _, _, i in degraded} == set(photo_bank.DEGRADATIONS)


def photo_score(images):
    result = photo_bank.score(lambda im, k: detect(im, candidate_sizes(k, 64)), images)
    print({k: v for k, v in result.items() if k != "misses"})
    return result


@needs_photos
def test_counts_on_photographs_with_the_size_given(photos):
    """Exact 128/255 squares on real photographs, colour and grayscale, the size given as Table 1
    gives it: the exact count nearly always, and a false square on almost no square-free photo."""
    result = photo_score(photos[0])
    exact, images = result["exact"]
    assert exact / images >= 0.97
    assert result["free_fired"][0] <= 1  # of 50
    for look, (right, total) in result["by_look"].items():
        assert right / total >= 0.95, look
    assert result["precision"] >= 0.97 and result["recall"] >= 0.98


@needs_photos
def test_counts_on_degraded_photographs(photos):
    """The same photographs with a model's degradations (noise, tint, blur): noisy squares on
    grayscale photos are what the counter misses most."""
    result = photo_score(photos[1])
    exact, images = result["exact"]
    assert exact / images >= 0.78
    assert result["free_fired"][0] <= 1
    assert result["by_look"]["colour"][0] / result["by_look"]["colour"][1] >= 0.95
    assert result["precision"] >= 0.97 and result["recall"] >= 0.78
