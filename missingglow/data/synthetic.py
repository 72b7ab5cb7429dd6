"""The built-in synthetic faces: procedurally drawn, varied, deterministic by (seed, index).

Each face is drawn with Pillow's ImageDraw on a canvas 4× the requested size (2× above 64 px, 1×
above 256 px) and shrunk with Lanczos, which anti-aliases the edges. What varies from face to face:
background (a two- to four-colour gradient), skin, hair and clothing colours, head position, size,
width and tilt, hair style (bald, short, fringe, side parting, long), eye spacing, size, iris colour
and gaze, eyebrow shape, nose, mouth width and smile (closed or open), the direction of the light
(soft shading on the head), and sometimes glasses.

All randomness comes from `random.Random` seeded with sha256("missingglow-face:{seed}:{index}"),
so a face does not depend on the process, the platform or the order faces are drawn in.
Pillow only (no torch, no NumPy): cheap to run in decoding workers.
"""

import colorsys
import hashlib
import math
import random

from PIL import Image, ImageDraw

VERSION = 1  # bump when the drawing changes: it is part of the cache's source string

# "low": each face drawn at half the size and enlarged again (bilinear), so no feature is sharper
# than two pixels. The scale study (docs/phenomenon.md) found a Glow learns the square as a factor
# several times sooner on these than on the full-detail faces; the CPU preset uses them.
DETAILS = ("full", "low")

SKIN = [
    (255, 224, 196),
    (241, 194, 160),
    (226, 178, 136),
    (198, 140, 100),
    (160, 108, 72),
    (112, 74, 52),
]
HAIR = [(24, 18, 14), (58, 38, 24), (104, 70, 40), (186, 148, 88), (150, 66, 32), (172, 168, 164)]
IRIS = [(70, 44, 24), (40, 28, 20), (70, 110, 150), (80, 110, 70), (120, 90, 50)]


def face_rng(seed, index):
    digest = hashlib.sha256(f"missingglow-face:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _jitter(rng, colour, amount):
    return tuple(max(0, min(255, int(c + rng.uniform(-amount, amount)))) for c in colour)


def _shade(colour, factor):
    return tuple(max(0, min(255, int(round(c * factor)))) for c in colour)


def _mix(a, b, t):
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=True))


def _random_colour(rng, sat=(0.15, 0.6), val=(0.35, 0.95)):
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def _ellipse(cx, cy, rx, ry, a0=0.0, a1=2 * math.pi, n=40):
    """Points on an ellipse (y down) from angle a0 to a1."""
    return [
        (cx + rx * math.cos(a0 + (a1 - a0) * k / n), cy + ry * math.sin(a0 + (a1 - a0) * k / n))
        for k in range(n + 1)
    ]


def draw_face(seed, index, size):
    """Face number `index` of the set `seed`, as a size×size RGB Pillow image."""
    rng = face_rng(seed, index)
    ss = 4 if size <= 64 else 2 if size <= 256 else 1
    w = size * ss

    # background: a smooth gradient through four corner colours
    base = _random_colour(rng, sat=(0.1, 0.5))
    corners = Image.new("RGB", (2, 2))
    corners.putdata([_jitter(rng, base, 50) for _ in range(4)])
    img = corners.resize((size, size), Image.BILINEAR)
    img = img.resize((w, w), Image.NEAREST) if ss > 1 else img
    draw = ImageDraw.Draw(img)

    skin = _jitter(rng, rng.choice(SKIN), 12)
    hair = _jitter(rng, rng.choice(HAIR), 14)
    cloth = _random_colour(rng, sat=(0.2, 0.8), val=(0.2, 0.9))

    s = rng.uniform(0.85, 1.1)
    cx, cy = 0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.05, 0.05)
    rx, ry = 0.25 * s * rng.uniform(0.9, 1.08), 0.32 * s * rng.uniform(0.94, 1.06)
    tilt = math.radians(rng.uniform(-12, 12))
    cos_t, sin_t = math.cos(tilt), math.sin(tilt)

    def px(points, rotate=True):
        out = []
        for x, y in points:
            if rotate:
                dx, dy = x - cx, y - cy
                x, y = cx + dx * cos_t - dy * sin_t, cy + dx * sin_t + dy * cos_t
            out.append((x * w, y * w))
        return out

    def poly(points, colour, rotate=True):
        draw.polygon(px(points, rotate), fill=colour)

    def line(points, colour, width):
        draw.line(px(points), fill=colour, width=max(1, int(round(width * w))), joint="curve")

    style = rng.choices(["short", "fringe", "side", "long", "bald"], [30, 20, 20, 25, 5])
    style = style[0]
    volume = rng.uniform(1.04, 1.16)

    # shoulders and neck (shoulders stay level; the head and neck tilt)
    poly(_ellipse(0.5 + (cx - 0.5) * 0.5, cy + ry + 0.3, 0.42, 0.24), cloth, rotate=False)
    if style == "long":
        poly(_ellipse(cx, cy + 0.35 * ry, rx * volume * 1.12, ry * 1.3), hair)
    neck = _shade(skin, 0.82)
    poly(
        [
            (cx - 0.45 * rx, cy + 0.5 * ry),
            (cx + 0.45 * rx, cy + 0.5 * ry),
            (cx + 0.5 * rx, cy + ry + 0.12),
            (cx - 0.5 * rx, cy + ry + 0.12),
        ],
        neck,
    )

    # ears, then the head with soft shading towards the light
    for side in (-1, 1):
        poly(
            _ellipse(cx + side * rx * 0.97, cy + 0.05 * ry, rx * 0.16, ry * 0.2, n=16),
            _shade(skin, 0.88),
        )
    light = rng.uniform(-1, 1)
    rings = 6
    for k in range(rings):
        t = k / rings
        shrink = 1 - 0.55 * t
        colour = _shade(skin, 0.86 + 0.16 * t)
        ring = cx + light * rx * 0.3 * t, cy - ry * 0.15 * t
        poly(_ellipse(*ring, rx * shrink, ry * shrink), colour)

    # hair on top: an outer arc over the head, back along the hairline
    if style != "bald":
        a = rng.uniform(0.05, 0.3) if style != "long" else 0.5
        outer = _ellipse(cx, cy, rx * volume, ry * volume, math.pi - a, 2 * math.pi + a, n=30)
        part = {"side": rng.choice([-0.35, 0.35]), "fringe": 0.0}.get(style, rng.uniform(-0.1, 0.1))
        height = {"fringe": rng.uniform(0.2, 0.35)}.get(style, rng.uniform(0.45, 0.7))
        inner = []
        for k in range(31):
            u = 1 - 2 * k / 30  # right to left
            y = cy - ry * 0.1 - ry * height * math.sqrt(max(0.0, 1 - u * u))
            if style == "side":
                y += ry * 0.18 * (u * part / 0.35 + 1) * 0.5 * (1 - u * u)
            inner.append((cx + u * rx * 0.99, y))
        poly(outer + inner, hair)

    # eyes
    eye_y = cy - ry * rng.uniform(0.02, 0.14)
    eye_dx = rx * rng.uniform(0.36, 0.46)
    ew = rx * rng.uniform(0.17, 0.23)
    eh = ew * rng.uniform(0.45, 0.62)
    iris = _jitter(rng, rng.choice(IRIS), 10)
    gaze = rng.uniform(-0.3, 0.3) * ew
    brow_lift = rng.uniform(1.5, 2.4) * eh
    brow_arch = rng.uniform(-0.2, 0.6) * eh
    brow_w = rng.uniform(0.012, 0.022)
    brow_colour = _shade(hair, 0.8) if style != "bald" else _shade(skin, 0.55)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        poly(_ellipse(ex, eye_y, ew, eh, n=24), (245, 243, 238))
        r = eh * 0.95
        poly(_ellipse(ex + gaze, eye_y, r, r, n=16), iris)
        poly(_ellipse(ex + gaze, eye_y, r * 0.5, r * 0.5, n=12), (12, 10, 10))
        line(_ellipse(ex, eye_y, ew, eh, math.pi, 2 * math.pi, n=12), _shade(skin, 0.45), 0.006)
        by = eye_y - brow_lift
        line(
            [
                (ex - side * ew * 0.9, by + 0.2 * eh),
                (ex, by - brow_arch),
                (ex + side * ew * 1.1, by + 0.3 * eh),
            ],
            brow_colour,
            brow_w,
        )

    # nose: a soft wedge and two nostrils
    nose_y = cy + ry * rng.uniform(0.22, 0.34)
    nose_w = rx * rng.uniform(0.18, 0.28)
    poly([(cx, eye_y + eh), (cx + nose_w, nose_y), (cx - nose_w, nose_y)], _shade(skin, 0.9))
    for side in (-1, 1):
        poly(
            _ellipse(cx + side * nose_w * 0.45, nose_y - 0.2 * eh, nose_w * 0.28, eh * 0.3, n=10),
            _shade(skin, 0.6),
        )

    # mouth: two lip curves around a smile line, sometimes open
    my = cy + ry * rng.uniform(0.5, 0.62)
    mw = rx * rng.uniform(0.32, 0.5)
    smile = ry * rng.uniform(-0.05, 0.16)
    lip = _mix(skin, (176, 58, 70), rng.uniform(0.3, 0.65))
    open_mouth = rng.random() < 0.25
    upper_th, lower_th = ry * rng.uniform(0.04, 0.07), ry * rng.uniform(0.05, 0.09)
    if open_mouth:
        upper_th, lower_th = upper_th + ry * 0.03, lower_th + ry * 0.06
    ts = [k / 12 * 2 - 1 for k in range(13)]
    mid = [(cx + t * mw, my + smile * (1 - t * t)) for t in ts]
    upper = [(x, y - upper_th * math.sqrt(1 - t * t)) for (x, y), t in zip(mid, ts, strict=True)]
    lower = [(x, y + lower_th * math.sqrt(1 - t * t)) for (x, y), t in zip(mid, ts, strict=True)]
    poly(upper + lower[::-1], lip)
    if open_mouth:
        inner_up = [
            (x, y - 0.25 * upper_th * math.sqrt(1 - t * t))
            for (x, y), t in zip(mid, ts, strict=True)
        ]
        inner_lo = [
            (x, y + 0.6 * lower_th * math.sqrt(1 - t * t))
            for (x, y), t in zip(mid, ts, strict=True)
        ]
        poly(inner_up[2:-2] + inner_lo[2:-2][::-1], (60, 20, 24))
    else:
        line(mid, _shade(lip, 0.6), 0.006)

    # sometimes glasses
    if rng.random() < 0.12:
        frame = rng.choice([(20, 20, 20), (90, 60, 30), (150, 150, 160)])
        for side in (-1, 1):
            line(_ellipse(cx + side * eye_dx, eye_y, ew * 1.5, eh * 2.2, n=24), frame, 0.01)
        line([(cx - eye_dx + ew * 1.5, eye_y), (cx + eye_dx - ew * 1.5, eye_y)], frame, 0.01)

    return img.resize((size, size), Image.LANCZOS, reducing_gap=2.0) if ss > 1 else img


def draw(seed, index, size, detail="full"):
    """Face `index` at the given detail (see DETAILS)."""
    if detail == "low":
        return draw_face(seed, index, max(1, size // 2)).resize((size, size), Image.BILINEAR)
    return draw_face(seed, index, size)


def face_bytes(args):
    """(seed, index, size, detail) -> (name, RGB bytes, note): the item a cache writer takes."""
    seed, index, size, detail = args
    return f"synthetic/{index:06d}", draw(seed, index, size, detail).tobytes(), ""


def contact_sheet(seed, n, size, columns=16):
    """n faces side by side in one image, for looking at them."""
    rows = (n + columns - 1) // columns
    sheet = Image.new("RGB", (columns * size, rows * size), (255, 255, 255))
    for i in range(n):
        sheet.paste(draw_face(seed, i, size), ((i % columns) * size, (i // columns) * size))
    return sheet
