"""The counter's pieces one by one, on inputs small enough to work out by hand: the integral
images, the box arithmetic, the clusters, the connected components, the blobs, the outline and
the detector's own checks. test_squares.py scores the whole detector on its banks; these pin what
a bank score is too coarse to see (tests/mutation.sh, docs/mutation.md)."""

import pytest
import torch

from missingglow.analysis import squares
from missingglow.analysis.square_bank import iou, match
from missingglow.analysis.squares import (
    DEFAULT,
    Square,
    _blobs,
    _cluster,
    _integral,
    _labels,
    _median,
    _overlap,
    _rect,
    _scale,
    _sides,
    _single_thread,
    _strength,
    _Tables,
    _windows,
    all_sizes,
    candidate_sizes,
    count,
    detect,
    detector_sizes_for,
)
from missingglow.data.masks import GREY
from missingglow.render.sheets import outline


def brute_sum(x, top, left, h, w):
    return x[..., top : top + h, left : left + w].double().sum((-2, -1))


def brute_mean(x, top, left, h, w):
    """Mean of x[..., top:top+h, left:left+w], 0 where the rectangle is empty."""
    if h <= 0 or w <= 0:
        return torch.zeros(x.shape[:-2], dtype=torch.float64)
    return brute_sum(x, top, left, h, w) / (h * w)


def canvas(size=20, value=0.9):
    """A (3, size, size) image of one colour, to paste squares and blobs on."""
    return torch.full((3, size, size), value)


def sign_grid(k):
    """A k×k checkerboard of ±1."""
    return ((torch.arange(k)[:, None] + torch.arange(k)) % 2 * 2 - 1).float()


def test_integral_and_rect_sum_any_rectangle():
    x = torch.rand(2, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    ii = _integral(x)
    assert ii.shape == (2, 3, 8, 8) and ii.dtype == torch.float64
    assert (ii[:, :, 0] == 0).all() and (ii[:, :, :, 0] == 0).all()
    boxes = [(0, 0, 7, 7), (2, 3, 4, 1), (6, 6, 1, 1), (1, 0, 3, 5), (0, 4, 2, 3)]
    for top, left, h, w in boxes:
        got = _rect(ii, torch.tensor([top]), torch.tensor([left]), h, w)[..., 0]
        torch.testing.assert_close(got, brute_sum(x, top, left, h, w), rtol=0, atol=1e-12)


def test_tables_mean_of_pixels_and_of_block_means():
    x = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    tables = _Tables(x, {1, 2, 3})
    assert tables.size == 9 and set(tables.sums) == {1, 2, 3}
    assert tables.sums[1] == (tables.ii1, tables.ii2)
    image = torch.tensor([1, 0])
    top, left = torch.tensor([[2], [0]]), torch.tensor([[5], [1]])
    got = tables.mean(image, top, left, 3, 4)
    want = torch.stack([brute_mean(x[1], 2, 5, 3, 4), brute_mean(x[0], 0, 1, 3, 4)])
    torch.testing.assert_close(got[:, 0], want, rtol=0, atol=1e-12)
    # sizes per row, and an empty rectangle's mean is 0 (not nan)
    got = tables.mean(image, top, left, torch.tensor([[1], [0]]), torch.tensor([[2], [3]]))
    torch.testing.assert_close(got[0, 0], brute_mean(x[1], 2, 5, 1, 2), rtol=0, atol=1e-12)
    assert (got[1, 0] == 0).all()
    assert (tables.mean(image, top, left, 0, 3) == 0).all()
    # of the squares, and of 2×2 block means: each block the mean of four pixels
    sq = tables.mean(image[:1], top[:1], left[:1], 3, 4, tables.ii2)[0, 0]
    want = brute_mean(x[1].double() ** 2, 2, 5, 3, 4)
    torch.testing.assert_close(sq, want, rtol=0, atol=1e-12)
    blocks = torch.nn.functional.avg_pool2d(x.double(), 2, 1)
    for b2, want in zip(tables.sums[2], (blocks, blocks**2), strict=True):
        got = tables.mean(torch.tensor([0]), torch.tensor([[3]]), torch.tensor([[2]]), 2, 5, b2)
        torch.testing.assert_close(got[0, 0], brute_mean(want[0], 3, 2, 2, 5), rtol=0, atol=1e-12)


def test_overlap_is_over_the_smaller_box_and_iou_over_the_union():
    assert _overlap((0, 0, 4), (2, 2, 2)) == 1.0  # inside: all of the smaller
    assert _overlap((0, 0, 4), (2, 3, 4)) == 2 * 1 / 16
    assert _overlap((2, 3, 4), (0, 0, 4)) == 2 * 1 / 16
    assert _overlap((0, 0, 4), (0, 2, 2)) == 1.0
    assert _overlap((0, 0, 6), (3, 4, 2)) == 1.0
    assert _overlap((0, 0, 6), (5, 5, 2)) == 1 / 4
    assert _overlap((0, 0, 3), (5, 0, 3)) == 0  # apart in rows only
    assert _overlap((0, 0, 3), (0, 5, 3)) == 0
    assert _overlap((0, 0, 3), (4, 4, 3)) == 0  # both negative: still 0
    assert _overlap((0, 0, 3), (0, 3, 3)) == 0  # touching
    assert iou((0, 0, 4), (2, 3, 4)) == 2 / (16 + 16 - 2)
    assert iou((0, 0, 6), (1, 2, 2)) == 4 / 36
    assert iou((1, 2, 2), (0, 0, 6)) == 4 / 36
    assert iou((0, 0, 3), (4, 4, 3)) == 0 and iou((0, 0, 3), (0, 3, 3)) == 0
    assert iou((5, 0, 3), (0, 0, 3)) == 0
    # a detection exactly at the threshold matches
    assert match([(0, 3, 10)], [(0, 0, 10)], min_iou=iou((0, 3, 10), (0, 0, 10))) == (1, 0, 0)


def test_median_is_the_upper_middle_of_the_sorted_values():
    assert _median([5, 1, 3]) == 3
    assert _median([4, 1, 3, 2]) == 3
    assert _median([7]) == 7


def test_clusters_report_the_median_window_preferring_exact_ones():
    # three windows around one square (scores 3, 2, 1), and one far away
    near = [
        (3.0, 10, 10, 12, False),
        (2.0, 11, 10, 12, False),
        (1.0, 10, 12, 12, False),
        (0.5, 40, 40, 10, False),
    ]
    assert _cluster(near, 0.5, 64) == [Square(10, 10, 12, 3.0), Square(40, 40, 10, 0.5)]
    # one window the exact grey: it alone gives the box, the score stays the seed's
    exact = [(3.0, 10, 10, 12, False), (2.0, 11, 12, 11, True), (1.0, 13, 10, 12, False)]
    assert _cluster(exact, 0.5, 64) == [Square(11, 12, 11, 3.0)]
    # best first, whatever the order given; the score rounded to 4 places
    assert _cluster(list(reversed(near)), 0.5, 64)[0] == Square(10, 10, 12, 3.0)
    assert _cluster([(1.234567, 0, 0, 4, False)], 0.5, 64) == [Square(0, 0, 4, 1.2346)]
    # a window overlapping the seed by exactly the threshold is a cluster of its own
    half = [(2.0, 0, 0, 4, False), (1.0, 0, 2, 4, False)]  # overlap 8/16 = 0.5
    assert len(_cluster(half, 0.5, 64)) == 2 and len(_cluster(half, 0.49, 64)) == 1
    # a window overlapping two seeds joins the better one (lefts 0 and 3: the upper median, 3)
    chain = [(3.0, 0, 0, 4, False), (2.0, 0, 6, 4, False), (1.0, 0, 3, 4, False)]
    assert _cluster(chain, 0.2, 64) == [Square(0, 3, 4, 3.0), Square(0, 6, 4, 2.0)]
    # the side is the mean of the median height and width, rounded, and the box kept inside
    wide = [(3.0, 0, 0, 4, False), (2.0, 0, 0, 6, False), (1.0, 0, 1, 6, False)]
    assert _cluster(wide, 0.5, 64) == [Square(0, 0, 6, 3.0)]
    assert _cluster([(1.0, 5, 6, 4, False)], 0.5, 8) == [Square(4, 4, 4, 1.0)]
    assert _cluster([(1.0, 0, 0, 9, False)], 0.5, 8) == [Square(0, 0, 8, 1.0)]
    assert _cluster([], 0.5, 8) == []
    assert _cluster([(1.0, 2, 2, 1, False)], 0.5, 8) == [Square(2, 2, 1, 1.0)]


def test_labels_are_four_connected_components_named_by_their_first_pixel():
    mask = torch.tensor(
        [[[1, 1, 0, 0, 1], [0, 1, 0, 1, 1], [0, 0, 1, 0, 0], [1, 0, 0, 0, 1], [1, 1, 0, 1, 1]]],
        dtype=torch.bool,
    )
    want = torch.tensor(
        [
            [
                [1, 1, 0, 0, 5],
                [0, 1, 0, 5, 5],
                [0, 0, 13, 0, 0],
                [16, 0, 0, 0, 20],
                [16, 16, 0, 20, 20],
            ]
        ]
    )
    got = _labels(mask)
    assert got.dtype == torch.long and torch.equal(got, want)
    # the last pixel alone keeps its own label, S·S, above every other
    corner = torch.zeros(1, 5, 5, dtype=torch.bool)
    corner[0, 4, 4] = corner[0, 0, 0] = True
    assert _labels(corner)[0, 4, 4] == 25 and _labels(corner)[0, 0, 0] == 1
    # a U shape: one component, named by its top-left pixel, however far the label must travel
    u = torch.zeros(2, 6, 6, dtype=torch.bool)
    u[0, :, 0] = u[0, :, 5] = u[0, 5, :] = True
    got = _labels(u)
    assert set(got[0][u[0]].tolist()) == {1} and (got[0][~u[0]] == 0).all()
    assert (got[1] == 0).all()


def ragged(size=16, box=(4, 5, 6), ring=0.9):
    """An image of one colour `ring` with a grey blob of side `box[2]` missing two corner pixels."""
    image = canvas(size, ring)
    t, l, k = box
    image[:, t : t + k, l : l + k] = GREY
    image[:, t, l] = image[:, t + k - 1, l + k - 1] = ring
    return image


def test_blobs_find_ragged_grey_squares_and_reject_what_is_not_one():
    found = _blobs(ragged()[None], 5, 7, DEFAULT)
    assert found == [[Square(4, 5, 6, round(34 / 36, 4))]]
    # a blob larger than 1.3 × the largest size, or below 0.75 × the smallest, is not one
    assert _blobs(ragged(box=(2, 2, 10))[None], 5, 7, DEFAULT) == [[]]
    assert _blobs(ragged(box=(2, 2, 4))[None], 5, 7, DEFAULT) == [[Square(2, 2, 4, 0.875)]]
    assert _blobs(ragged(box=(2, 2, 4))[None], 6, 7, DEFAULT) == [[]]  # 4 < 0.75 × 6
    assert _blobs(ragged(box=(2, 2, 5))[None], 6, 7, DEFAULT) == [[Square(2, 2, 5, 0.92)]]
    # a grey ring around it (no contrast), a noisy blob, a thin bar: none is a square
    assert _blobs(ragged(ring=0.55)[None], 5, 7, DEFAULT) == [[]]
    noisy = ragged()
    g = torch.Generator().manual_seed(0)
    noisy[:, 4:10, 5:11] += 0.09 * torch.randn(3, 6, 6, generator=g).sign()
    noisy = noisy.clamp(0, 1)
    assert _blobs(noisy[None], 5, 7, DEFAULT) == [[]]
    bar = canvas(16)
    bar[:, 4:10, 5:7] = GREY
    assert _blobs(bar[None], 5, 7, DEFAULT) == [[]]
    # a blob covering too little of its box (an L) is not one either
    ell = canvas(16)
    ell[:, 4:10, 5:7] = GREY
    ell[:, 8:10, 5:11] = GREY
    assert _blobs(ell[None], 5, 7, DEFAULT) == [[]]
    # a square against the border is found, its box kept inside the image
    edge = ragged(box=(10, 10, 6))
    assert _blobs(edge[None], 5, 7, DEFAULT) == [[Square(10, 10, 6, round(34 / 36, 4))]]


def test_blobs_from_8_px_need_three_corners():
    disc = canvas(24)
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    disc[:, (yy - 11.5) ** 2 + (xx - 11.5) ** 2 <= 4.6**2] = GREY  # 10 px across
    assert _blobs(disc[None], 8, 9, DEFAULT) == [[]]
    square = canvas(24)
    square[:, 7:16, 7:16] = GREY
    square[:, 7, 7] = 0.9
    assert _blobs(square[None], 8, 9, DEFAULT) == [[Square(7, 7, 9, round(80 / 81, 4))]]


def blob_boxes(image, smallest, largest):
    return [s.box() for s in _blobs(image[None], smallest, largest, DEFAULT)[0]]


def test_blobs_corners_are_quarter_blocks_and_three_must_be_filled():
    """From 8 px up a blob needs three of its four corner blocks (h//4 × w//4) at least half
    filled; each corner in turn is the one missing."""

    def nine(missing):
        image = canvas()
        image[:, 5:14, 5:14] = GREY
        for r, c in missing:
            image[:, r, c] = 0.9
        return image

    for corner in ((5, 5), (5, 12), (12, 5), (12, 12)):  # a whole 2×2 corner block gone
        r, c = corner
        image = nine([(r, c), (r + 1, c), (r, c + 1), (r + 1, c + 1)])
        assert blob_boxes(image, 8, 9) == [(5, 5, 9)], corner
    two = nine([(5, 5), (6, 5), (5, 6), (6, 6), (12, 12), (13, 12), (12, 13), (13, 13)])
    assert blob_boxes(two, 8, 9) == []
    # half a block is enough: two pixels of each top block gone, side by side or one above the
    # other, leave every corner at exactly 0.5
    assert blob_boxes(nine([(5, 5), (5, 6), (5, 12), (5, 13)]), 8, 9) == [(5, 5, 9)]
    assert blob_boxes(nine([(5, 5), (6, 5), (12, 5), (13, 5)]), 8, 9) == [(5, 5, 9)]
    # below 8 px corners are not asked for; at 8 they are
    eight = canvas()
    eight[:, 5:13, 5:13] = GREY
    for r, c in ((5, 5), (12, 12)):
        eight[:, r : r + 1, c : c + 1] = 0.9
    eight[:, 5:7, 5:7] = eight[:, 11:13, 11:13] = 0.9
    assert blob_boxes(eight, 8, 8) == []
    seven = canvas()
    seven[:, 5:12, 5:12] = GREY
    seven[:, 5, 5] = seven[:, 11, 11] = seven[:, 5, 6] = seven[:, 11, 10] = 0.9
    assert blob_boxes(seven, 6, 7) == [(5, 5, 7)]


def test_blobs_sizes_are_bounded_by_three_quarters_and_thirteen_tenths():
    for side, smallest, largest, found in (
        (3, 4, 4, True),
        (13, 4, 10, True),
        (14, 4, 10, False),
        (2, 4, 4, False),
    ):
        image = canvas()
        image[:, 3 : 3 + side, 3 : 3 + side] = GREY
        assert (blob_boxes(image, smallest, largest) == [(3, 3, side)]) is found, side
    wide = canvas()
    wide[:, 3:6, 3:7] = GREY  # 3 × 4: both within 3 … 5.2, centred 4 × 4
    assert blob_boxes(wide, 4, 4) == [(2, 3, 4)]
    tall = canvas()
    tall[:, 3:7, 3:6] = GREY
    assert blob_boxes(tall, 4, 4) == [(3, 2, 4)]


def test_blobs_at_the_edges_are_kept_inside_the_image():
    corner = canvas(16)
    corner[:, 0:6, 0:6] = GREY
    corner[:, 5, 5] = corner[:, 5, 4] = 0.9
    assert blob_boxes(corner, 5, 7) == [(0, 0, 6)]  # its label is 1, the first pixel's
    low = canvas(16)
    low[:, 12:16, 4:12] = GREY  # 4 × 8: reported as 6 × 6
    assert blob_boxes(low, 5, 7) == [(10, 5, 6)]
    right = canvas(16)
    right[:, 4:12, 12:16] = GREY
    assert blob_boxes(right, 5, 7) == [(5, 10, 6)]


def test_blobs_later_in_the_image_are_found_after_one_is_refused():
    """Each refusal (too few pixels, too large, no corners, noisy, no ring) moves on to the next
    blob, which is found."""
    good = (12, 12, 6)

    def with_good(image):
        t, l, k = good
        image[:, t : t + k, l : l + k] = GREY
        return image

    tiny = canvas()
    tiny[:, 1, 1] = GREY
    large = canvas()
    large[:, 0:11, 0:11] = GREY
    discish = canvas()
    discish[:, 0:9, 0:9] = GREY
    discish[:, 0:2, 0:2] = discish[:, 7:9, 7:9] = 0.9
    noisy = canvas()
    noisy[:, 1:7, 1:7] = GREY + 0.09 * (torch.arange(36).view(6, 6) % 2 * 2 - 1)
    ringed = canvas()
    ringed[:, 0:8, 0:8] = GREY + 0.12
    ringed[:, 1:7, 1:7] = GREY
    for name, image in (
        ("tiny", tiny),
        ("large", large),
        ("corners", discish),
        ("noisy", noisy),
        ("ring", ringed),
    ):
        assert blob_boxes(with_good(image), 5, 7) == [good], name


def test_a_blob_filling_exactly_the_share_of_its_box_is_taken():
    image = canvas(12)
    image[:, 2, 2:7] = image[:, 6, 2:7] = GREY  # 15 of a 5 × 5 box: 0.6 exactly
    image[:, 3:6, 2] = GREY
    image[:, 3:5, 6] = GREY
    assert blob_boxes(image, 5, 5) == [(2, 2, 5)]


def test_blobs_spread_and_ring():
    """A blob's pixels must be uniform (pooled std of each channel, over its pixels) and the ring
    just around it clearly off grey; what lies further away does not matter."""

    def tinted(delta):
        image = canvas()
        image[:, 4:10, 4:10] = GREY
        image[0, 4:10, 4:10] += delta
        image[1, 4:10, 4:10] -= delta
        return image

    assert blob_boxes(tinted(0.099), 5, 7) == [(4, 4, 6)]  # tinted but uniform: one colour
    g = torch.Generator().manual_seed(4)
    wobbly = canvas()
    signs = torch.randint(0, 2, (3, 6, 6), generator=g) * 2 - 1
    wobbly[:, 4:10, 4:10] = GREY + 0.09 * signs  # every pixel grey-looking
    assert blob_boxes(wobbly, 5, 7) == []
    # the pooled std is the population one: 0.0795 passes 0.08 (n - 1 would make it 0.0806)
    checker = canvas()
    checker[:, 4:10, 4:10] = GREY + 0.0795 * sign_grid(6)
    assert blob_boxes(checker, 5, 7) == [(4, 4, 6)]
    far = canvas(value=GREY + 0.11)  # not grey-looking, but nearly
    far[:, 2:12, 2:12] = 0.9
    far[:, 4:10, 4:10] = GREY
    assert blob_boxes(far, 5, 7) == [(4, 4, 6)]


def test_detect_runs_the_blob_pass_only_below_blob_below():
    image = ragged()  # two corners missing: no straight-edged window takes it
    assert detect(image, [5, 6, 7]) == [Square(4, 5, 6, round(34 / 36, 4))]
    assert detect(image, [5, 6, 7], blobs=False) == []
    assert detect(image, [5, 6, 8]) == []  # a search reaching blob_below: no blobs


def frame_of(size, t, l, k):
    """Pixels of the one-pixel frame around (t, l, k) that lie in a size × size image."""
    frame = torch.zeros(size, size, dtype=torch.bool)
    for r in range(size):
        for c in range(size):
            around = t - 1 <= r <= t + k and l - 1 <= c <= l + k
            inside = t <= r < t + k and l <= c < l + k
            frame[r, c] = around and not inside
    return frame


def test_outline_draws_a_clipped_frame_just_outside_each_square():
    size = 7
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(2)).double()
    before = image.clone()
    colour = (0.1, 1.0, 0.3)
    c = torch.tensor(colour, dtype=torch.float64)[:, None]
    for k in range(1, size + 1):
        for t in range(size - k + 1):
            for left in range(size - k + 1):
                frame = frame_of(size, t, left, k)
                for square in (Square(t, left, k, 1.0), (t, left, k)):
                    drawn = outline(image, [square], colour=colour)
                    assert torch.equal(drawn[:, frame], c.expand(-1, int(frame.sum()))), square
                    assert torch.equal(drawn[:, ~frame], before[:, ~frame]), square
    assert torch.equal(image, before)  # a copy, not in place
    boxes = [(1, 1, 2), (4, 3, 3), (0, 5, 2)]
    frames = [frame_of(size, *b) for b in boxes]
    both = frames[0] | frames[1] | frames[2]
    drawn = outline(image, boxes, colour=colour)
    assert torch.equal(drawn[:, both], c.expand(-1, int(both.sum())))
    assert torch.equal(drawn[:, ~both], before[:, ~both])
    assert outline(torch.zeros(3, 4, 4), [(1, 1, 1)])[:, 0, 0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("m,b", [(0, 1), (1, 1), (0, 2), (1, 2), (1, 3)])
def test_sides_are_the_blocks_just_outside_and_just_inside_each_side(m, b):
    size = 11
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3 + m + b))
    tables = _Tables(x, {1, b})
    windows = [
        (1, 0, 0, 5),
        (0, 3, 2, 6),
        (1, 5, 6, 5),
        (0, 1, 1, 9),
        (1, 6, 0, 5),
        (0, 0, 4, 7),
        (1, 2, 3, 8),
        (0, 0, 0, 11),
    ]
    for image, t, left, k in windows:
        it, tt, lt = (torch.tensor([v]) for v in (image, t, left))
        border, out, ins = _sides(tables, it, tt, lt, k, m, b)
        img = x[image]
        assert border[0].tolist() == [t == 0, t + k == size, left == 0, left + k == size]
        n = k - 2 * m - b + 1
        assert out.shape == ins.shape == (1, 4, n, 3)
        above, below = min(t, b), min(size - t - k, b)
        before, after = min(left, b), min(size - left - k, b)
        for j in range(n):
            r, c = t + m + j, left + m + j
            want_out = [
                brute_mean(img, t - above, c, above, b),
                brute_mean(img, t + k, c, below, b),
                brute_mean(img, r, left - before, b, before),
                brute_mean(img, r, left + k, b, after),
            ]
            want_in = [
                brute_mean(img, t + m, c, b, b),
                brute_mean(img, t + k - m - b, c, b, b),
                brute_mean(img, r, left + m, b, b),
                brute_mean(img, r, left + k - m - b, b, b),
            ]
            for side in range(4):
                torch.testing.assert_close(out[0, side, j], want_out[side], rtol=0, atol=1e-12)
                torch.testing.assert_close(ins[0, side, j], want_in[side], rtol=0, atol=1e-12)


def strength(image, k, b, spread, need, settings=DEFAULT, at=1):
    """_strength of the window (at, at, k) of one image, margin 0, inside colour exactly grey."""
    tables = _Tables(image[None], {1, b})
    one = torch.tensor([0])
    _, got, rms = _strength(
        tables,
        one,
        torch.tensor([at]),
        torch.tensor([at]),
        k,
        0,
        b,
        torch.full((1, 3), GREY, dtype=torch.float64),
        torch.tensor([spread], dtype=torch.float64),
        torch.tensor([need], dtype=torch.float64),
        settings,
    )
    return got[0].tolist(), rms[0].tolist()


def window_in(size, k, outside, at=1):
    image = canvas(size, outside)
    image[:, at : at + k, at : at + k] = GREY
    return image


def test_strength_steps_at_the_pixel_ratio_and_the_block_ratio():
    # pixels (b = 1): a step of 0.07 clears max(2 × 0.03, 0.05), not 3 × 0.03
    got, rms = strength(window_in(8, 6, GREY + 0.07), 6, 1, spread=0.03, need=0.18)
    assert got == [1.0] * 4
    assert rms == pytest.approx([0.07] * 4, abs=1e-6)  # the RMS of the outside's distances
    # 2×2 blocks: a step of 0.055 does not clear max(3 × 0.02, 0.05); it would at ratio 2
    got, _ = strength(window_in(10, 8, GREY + 0.055), 8, 2, spread=0.02, need=0.5)
    assert got == [0.0] * 4
    got, _ = strength(window_in(10, 8, GREY + 0.065), 8, 2, spread=0.02, need=0.5)
    assert got == [1.0] * 4
    # on the image border a side counts as an edge
    got, _ = strength(window_in(8, 6, GREY, at=0), 6, 1, spread=0.0, need=0.05, at=0)
    assert got == [1.0, 0.0, 1.0, 0.0]


def test_strength_needs_each_side_flat_just_inside():
    """A side whose values just inside are off the inside colour (by more than `flat` × need)
    does not step, on its own: the other sides, off at one end only, still do."""
    image = window_in(14, 11, GREY + 0.1)
    image[:, 1, 1:12] = GREY + 0.15  # the window's first row
    got, _ = strength(image, 11, 1, spread=0.0, need=0.2, settings=squares.Settings(flat=0.5))
    assert got == [0.0, 1.0, 1.0, 1.0]
    got, _ = strength(image, 11, 1, spread=0.0, need=0.2)  # flat = 1: 0.15 <= 0.2
    assert got == [1.0] * 4


def test_strength_is_the_share_off_where_a_third_does_not_step():
    image = window_in(14, 11, GREY + 0.1)
    image[:, 0, 1:5] = GREY  # the first third of the top side: no step
    got, _ = strength(image, 11, 1, spread=0.0, need=0.05)
    assert got == [pytest.approx(7 / 11), 1.0, 1.0, 1.0]


def test_strength_cuts_short_sides_into_halves_and_tiny_ones_not_at_all():
    image = window_in(7, 5, GREY + 0.1)
    image[:, 0, 1:3] = GREY  # n = 5: halves [0, 2) and [2, 5)
    got, _ = strength(image, 5, 1, spread=0.0, need=0.05)
    assert got == [pytest.approx(3 / 5), 1.0, 1.0, 1.0]
    image = window_in(5, 3, GREY + 0.1)
    image[:, 0, 3] = GREY  # n = 3: one part, RMS 0.082 over the side
    got, _ = strength(image, 3, 1, spread=0.0, need=0.05)
    assert got == [1.0] * 4


def test_count_uses_the_settings_it_is_given():
    image = canvas(16)
    image[:, 3:9, 4:10] = GREY
    assert count(image[None], [6]) == [1]
    assert count(image[None], [6], squares.Settings(tint=-1.0, blob_below=0)) == [0]


def test_sizes_to_search():
    assert candidate_sizes(12, 64, spread=3) == list(range(9, 16))
    assert candidate_sizes(3, 64) == [3, 4]  # not below the minimum
    assert candidate_sizes(3, 64, minimum=2) == [2, 3, 4]
    assert candidate_sizes(16, 16) == [13, 14, 15, 16]  # not above the image
    assert candidate_sizes(9, 64) == [7, 8, 9, 10, 11]  # round(9 / 6) = 2
    assert candidate_sizes(4, 64) == [3, 4, 5]  # at least 1
    assert all_sizes(8) == [4] and all_sizes(6) == [4] and all_sizes(16, minimum=6) == [6, 7, 8]
    assert detector_sizes_for(12, 64) == candidate_sizes(12, 64)
    assert detector_sizes_for(None, 16) == detector_sizes_for(0, 16) == all_sizes(16)
    assert [_scale(k, DEFAULT) for k in (9, 10, 13, 14)] == [1, 2, 2, 3]


def test_detect_checks_its_input_and_restores_the_thread_count():
    for shape in ((1, 8, 8), (2, 1, 8, 8), (1, 3, 8, 9), (3, 8), (1, 1, 3, 8, 8)):
        with pytest.raises(ValueError, match=r"expected \(N, 3, S, S\) images"):
            detect(torch.zeros(shape), [4])
    threads = torch.get_num_threads()
    with _single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    image = canvas(16)
    image[:, 3:9, 4:10] = GREY
    single = detect(image, [6, 0, 40, 6.0])  # sizes outside 1…S are skipped
    assert [s.box() for s in single] == [(3, 4, 6)]
    assert detect(image[None].double(), [6]) == [single]  # a batch of one gives a list of one
    assert detect(image, []) == []


def test_windows_of_an_exact_square():
    image = torch.full((1, 3, 16, 16), 0.9)
    image[:, :, 3:9, 4:10] = GREY
    tables = _Tables(image, {1})
    i, t, l, score, exact = _windows(tables, 6, DEFAULT)
    assert (i.tolist(), t.tolist(), l.tolist(), exact.tolist()) == ([0], [3], [4], [True])
    # every side is off by 0.9 − grey, and the inside's spread is 0
    assert score.item() == pytest.approx((0.9 - GREY) / 0.01, rel=1e-6)
    # a window larger than the image's flat part finds nothing; one too small to hold a block
    # gives empty tensors of the right types
    i, t, l, score, exact = _windows(tables, 1, squares.Settings(margin_from=1))
    assert len(i) == 0 and score.dtype == torch.float64 and exact.dtype == torch.bool
    assert i.dtype == t.dtype == l.dtype == torch.long and len(score) == len(exact) == 0


def test_windows_mark_only_the_masks_own_grey_as_exact():
    """A noisy square whose mean is exactly grey is found but not marked exact; a square whose
    edge band alternates around grey (its mean still grey) is found through its inside, not as
    the mask's own grey, which must be flat over the whole window."""
    g = torch.Generator().manual_seed(0)
    noisy = canvas(16)
    noise = (torch.randint(0, 2, (6, 6), generator=g) * 2 - 1).float() * 0.03
    noisy[:, 5:11, 4:10] = GREY + noise - noise.mean()
    i, t, l, _, exact = _windows(_Tables(noisy[None], {1}), 6, DEFAULT)
    assert (t.tolist(), l.tolist(), exact.tolist()) == ([5], [4], [False])
    banded = canvas(16)
    banded[:, 4:12, 4:12] = GREY
    sign = sign_grid(16)
    band = torch.zeros(16, 16, dtype=torch.bool)
    band[4:12, 4:12] = True
    band[5:11, 5:11] = False
    banded[:, band] = (GREY + 0.15 * sign)[band]
    i, t, l, _, exact = _windows(_Tables(banded[None], {1}), 8, DEFAULT)
    assert (t.tolist(), l.tolist(), exact.tolist()) == ([4], [4], [False])


def test_an_exact_square_needs_half_of_each_side_off_counting_its_corner_pixels():
    """The mask's own grey is judged pixel by pixel on the line just outside, end to end. Above
    this square, grey content covers part of that line: where a third of the side has no pixel
    off, the side counts as an edge only if at least half of its 8 pixels are off."""

    def square_under(grey_columns):
        image = canvas(16)
        image[:, 6:14, 4:12] = GREY
        for c in grey_columns:
            image[:, 0:6, c] = GREY
        return [s.box() for s in detect(image, [8])]

    assert square_under((4, 5, 6, 10, 11)) == []  # 3 of 8 off
    assert square_under((4, 5, 6, 11)) == [(6, 4, 8)]  # 4 of 8: half, an edge
    assert square_under((4, 5, 10, 11)) == [(6, 4, 8)]  # each third steps


def test_windows_need_the_sides_off_on_average_in_each_window_alone():
    """Each side 60 % off (above `side_share`, below `mean_share` on average) is no square, even
    beside another image's clear square in the same batch."""
    image = canvas(20)
    image[:, 5:15, 5:15] = GREY
    image[:, 4, 5:9] = image[:, 15, 5:9] = image[:, 5:9, 4] = image[:, 5:9, 15] = GREY
    clear = canvas(20)
    clear[:, 5:15, 5:15] = GREY
    found = detect(torch.stack([image, clear, image]), [10])
    assert found[0] == found[2] == [] and [s.box() for s in found[1]] == [(5, 5, 10)]


def test_a_windows_score_is_its_edge_over_its_spread_in_blocks():
    """Score = mean side strength × weakest side's RMS step / (spread + 0.01), the spread taken
    over the b×b block means that start inside the band (here 2×2 blocks of a 12-px window; its
    inside rows 9 and 10 are grey ± 0.05, so only the block starting at row 8 is off grey)."""
    image = canvas(20)
    t = l = 4
    image[:, t : t + 12, l : l + 12] = GREY
    image[:, t + 9, l + 1 : l + 11] += 0.05
    image[:, t + 10, l + 1 : l + 11] -= 0.05
    i, tops, lefts, score, exact = _windows(_Tables(image[None], {1, 2}), 12, DEFAULT)
    at = list(zip(tops.tolist(), lefts.tolist(), strict=True)).index((t, l))
    blocks = torch.nn.functional.avg_pool2d(image.double()[None], 2, 1)[0]
    inside = blocks[:, t + 1 : t + 10, l + 1 : l + 10].flatten(1)  # 9 × 9 block starts
    spread = inside.var(1, unbiased=False).mean().sqrt().item()
    mu = image.double()[:, t + 1 : t + 11, l + 1 : l + 11].mean((1, 2))
    assert not exact[at]
    assert score[at].item() == pytest.approx((0.9 - mu.max().item()) / (spread + 0.01), rel=1e-6)


def test_windows_check_the_level_of_each_corner_block():
    """The corner blocks are inner // 4 pixels (at least 2): a 2×2 corner off grey, offset within
    its 3×3 and its quarter, is seen at inner 10; a 3×3 corner off, offset within its 2×2 and its
    quarter, is seen at inner 12."""
    image = canvas(20)
    image[:, 4:16, 4:16] = GREY  # k = 12, inner 10 from (5, 5)
    image[:, 5:7, 5:7] += 0.05  # the 2×2 corner block
    image[:, 7, 5:8] -= 0.04  # the rest of its 3×3
    image[:, 5:7, 7] -= 0.04
    _, t, l, _, _ = _windows(_Tables(image[None], {1, 2}), 12, DEFAULT)
    assert (4, 4) not in list(zip(t.tolist(), l.tolist(), strict=True))
    image = canvas(20)
    image[:, 4:18, 4:18] = GREY  # k = 14, inner 12 from (5, 5)
    image[:, 7, 5:8] += 0.05  # the 3×3 block's outer L, 5 pixels
    image[:, 5:7, 7] += 0.05
    image[:, 9, 5:10] -= 0.05  # the same taken back in its quarter
    _, t, l, _, _ = _windows(_Tables(image[None], {1, 3}), 14, DEFAULT)
    assert (4, 4) not in list(zip(t.tolist(), l.tolist(), strict=True))


def test_windows_check_the_level_of_each_quarter():
    """A square brighter over an L inside one quarter (outside its corner blocks): the quarter's
    mean is off the whole's, so the window is not flat (a window one pixel up and left, with
    less of the L in its quarter, may still pass)."""
    image = canvas(20)
    image[:, 4:16, 4:16] = GREY
    flat = image.clone()
    image[:, 5 + 3 : 5 + 5, 5 : 5 + 5] += 0.1  # inner 10 × 10 from (5, 5): rows 3-4
    image[:, 5 : 5 + 5, 5 + 3 : 5 + 5] += 0.1  # ... and columns 3-4 of its quarter
    image = image.clamp(0, 1)
    assert [s.box() for s in detect(flat, [12])] == [(4, 4, 12)]
    i, t, l, _, _ = _windows(_Tables(image[None], {1, 2}), 12, DEFAULT)
    assert (4, 4) not in list(zip(t.tolist(), l.tolist(), strict=True))


def test_windows_from_8_px_ignore_a_blurred_band_inside_their_edge():
    """A square whose outermost pixel ring is blurred halfway to its surroundings is still found
    at its full size from 8 px up, where that band is left out of the inside."""
    image = canvas(16)
    image[:, 4:12, 4:12] = (GREY + 0.9) / 2
    image[:, 5:11, 5:11] = GREY
    assert [s.box() for s in detect(image, [8])] == [(4, 4, 8)]
    seven = canvas(16)
    seven[:, 4:11, 4:11] = (GREY + 0.9) / 2
    seven[:, 5:10, 5:10] = GREY
    assert detect(seven, [7]) == []
