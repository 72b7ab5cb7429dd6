"""The grey-square detector: exact on known squares, silent on natural grey content.

The bank (tests/squares_bank.py) puts 0–3 squares on synthetic faces, colour gradients, sinusoid
textures, pixel noise, smooth random fields and random-shape scenes, then blurs, adds noise, tints
the squares or quantises to 5 bits. Its scores on the full bank are in docs/phenomenon.md;
these tests run a smaller cut of it.
"""
import torch

from missingglow.analysis.squares import (
    Square,
    all_sizes,
    candidate_sizes,
    count,
    detect,
    iou,
    match,
    outline,
)
from missingglow.data.masks import GREY

from squares_bank import grey_content, score


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
            image[:, t:t + s, l:l + s] = GREY
        found = detect(image, candidate_sizes(12, 64))
        assert match(found, boxes[:k]) == (k, 0, 0), (k, found)


def test_accuracy_on_the_bank_at_64px():
    result = score(lambda im: detect(im, candidate_sizes(12, 64)), seed=5, size=64, square=12,
                   per_cell=1)
    print({k: v for k, v in result.items() if k != "misses"})
    assert result["precision"] >= 0.97
    assert result["recall"] >= 0.93
    assert result["count_accuracy"] >= 0.9
    assert result["false_on_grey"] == []


def test_accuracy_on_the_bank_at_16px_small_preset_scale():
    result = score(lambda im: detect(im, candidate_sizes(5, 16)), seed=5, size=16, square=5,
                   per_cell=1)
    print({k: v for k, v in result.items() if k != "misses"})
    assert result["precision"] >= 0.9
    assert result["recall"] >= 0.75


def test_silent_on_natural_grey_content():
    """Grey backgrounds, bands, rectangles, discs, ramps, half-images and a square of another size
    are grey but not a K×K square."""
    for size, k in ((64, 12), (64, 20)):
        for image, what in grey_content(seed=3, size=size, square=k):
            assert detect(image, candidate_sizes(k, size)) == [], what


def test_blur_noise_and_tint_are_tolerated():
    g = torch.Generator().manual_seed(0)
    image = face(index=11)
    image[:, 20:32, 20:32] = torch.tensor([0.55, 0.47, 0.5])[:, None, None]   # tinted
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
    assert drawn[0, 1, 1] == 1 and drawn[0, 5, 5] == 1      # the frame lies just outside
    assert drawn[:, 2:5, 2:5].abs().sum() == 0              # the square itself stays visible
