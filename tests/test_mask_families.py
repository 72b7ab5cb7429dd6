"""Each mask family covers the share it claims, is a pure function of its arguments, and varies
from image to image where it should."""

import pytest
import torch

from missingglow.data.mask_families import FAMILIES, family_mask, family_masks
from missingglow.data.masks import square_mask, square_positions
from missingglow.errors import UserError

INDICES = range(300)


@pytest.mark.parametrize("size", [16, 17, 64])
def test_centre_is_a_centred_square_of_half_the_side(size):
    mask = family_mask("centre", 0, 5, size)
    side, top = size // 2, (size - size // 2) // 2
    assert mask.shape == (1, size, size) and mask.dtype == torch.bool
    assert int(mask.sum()) == side * side
    assert mask[0, top : top + side, top : top + side].all()
    if size % 2 == 0:
        assert torch.equal(mask, mask.flip(-1)) and torch.equal(mask, mask.flip(-2))
    assert torch.equal(mask, family_mask("centre", 9, 123, size))  # the same for every image


@pytest.mark.parametrize("size", [16, 15])
def test_pixels_misses_exactly_half_and_differs_per_image(size):
    masks = family_masks("pixels", 0, INDICES, size)
    assert (masks.sum((1, 2, 3)) == size * size // 2).all()
    assert len({tuple(m.flatten().tolist()) for m in masks}) == len(INDICES)
    # over many images every pixel is missing about half the time (not one fixed pattern)
    rate = masks.float().mean(0)
    assert 0.35 < rate.min() and rate.max() < 0.65


def test_rectangles_cover_10_to_40_percent_and_spread_their_share():
    size = 16
    masks = family_masks("rectangles", 0, INDICES, size)
    share = masks.float().mean((1, 2, 3))
    assert (share >= 0.10).all() and (share <= 0.40).all()
    # the share is drawn per image, uniform over the range (its mean 0.25; the last rectangle may
    # pass the drawn share by up to 2 %), not stuck at one end
    assert share.min() < 0.15 and share.max() > 0.35
    assert 0.24 < share.mean() < 0.28
    assert len({tuple(m.flatten().tolist()) for m in masks}) == len(INDICES)


def test_rectangles_are_unions_of_rectangles():
    """Every missing pixel lies in a missing rectangle of at least 2×2 at 16 px (sides ≥ S/8),
    unless the sides had to shrink near the 40 % cap: a check that the holes are blocks, not
    scattered pixels."""
    masks = family_masks("rectangles", 1, range(100), 16)[:, 0]
    m = masks.float()
    block = torch.nn.functional.max_pool2d(  # pixel in some all-missing 2×2 block
        torch.nn.functional.avg_pool2d(m[:, None], 2, stride=1).eq(1).float(),
        2,
        stride=1,
        padding=1,
    )[:, 0, :16, :16]
    in_block = (block > 0) & masks
    assert in_block.sum() >= 0.95 * masks.sum()


def test_square_is_the_training_square(gen):
    size, k, seed = 16, 5, 3
    for index in torch.randint(0, 10_000, (20,), generator=gen).tolist():
        mask = family_mask("square", seed, index, size, square=k)
        expected = square_mask(square_positions(seed, index, k, 1, size), k, size)
        assert torch.equal(mask, expected) and int(mask.sum()) == k * k
    positions = {tuple(square_positions(seed, i, k, 1, size)[0].tolist()) for i in INDICES}
    assert len(positions) > 50


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_a_pure_function_of_its_arguments(family):
    a = family_masks(family, 7, range(20), 16, square=4)
    b = family_masks(family, 7, range(20), 16, square=4)
    assert torch.equal(a, b) and a.shape == (20, 1, 16, 16) and a.dtype == torch.bool
    if family != "centre":
        assert not torch.equal(a, family_masks(family, 8, range(20), 16, square=4))


def test_families_are_drawn_independently_of_torchs_global_generator():
    torch.manual_seed(1)
    a = family_mask("rectangles", 0, 3, 16)
    torch.manual_seed(2)
    torch.rand(100)
    assert torch.equal(a, family_mask("rectangles", 0, 3, 16))


def test_bad_arguments_are_one_line_user_errors():
    with pytest.raises(UserError, match="one of square, centre"):
        family_mask("circle", 0, 0, 16)
    with pytest.raises(UserError, match="square's side"):
        family_mask("square", 0, 0, 16)
    with pytest.raises(UserError, match="does not fit"):
        family_mask("square", 0, 0, 16, square=17)
