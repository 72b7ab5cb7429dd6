"""Small charts drawn with Pillow (there is no matplotlib here): line charts, overlaid histograms,
labelled image grids, and panels stacked into one PNG.

    chart = line_chart([Series("empirical E", ts, e), Series("t²", ts, t2, dashed=True)],
                       title="Squares per sample", xlabel="temperature t", ylabel="E[count]")
    save(stack([chart, other]), "table1.png")

Non-finite values are left out of a line (it breaks there) and of a histogram (callers report how
many there were): a chart never shows a NaN as if it were a number.
"""

import itertools
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


@dataclass
class Series:
    label: str
    x: list
    y: list
    dashed: bool = False
    markers: bool = True
    colour: tuple = None


_ASCII = {
    "α": "alpha",
    "²": "^2",
    "‖": "||",
    "Φ": "Phi",
    "×": "x",
    "√": "sqrt ",
    "ε": "eps",
    "—": "-",
    "−": "-",
    "…": "...",
}
_FONTS = {}


def font(size=13):
    """DejaVu Sans when the system has it (Greek letters, ², ‖), else Pillow's own font."""
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.truetype("DejaVuSans.ttf", size)
        except OSError:
            try:
                _FONTS[size] = ImageFont.load_default(size=size)
            except TypeError:  # Pillow < 10.1: a fixed bitmap font
                _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def _spell(string, fnt):
    """The string, with symbols spelled out in ASCII when the font is not DejaVu."""
    if "DejaVu" in str(getattr(fnt, "path", "")):
        return string
    return "".join(_ASCII.get(c, c) for c in string)


def _text_size(draw, string, fnt):
    left, top, right, bottom = draw.textbbox((0, 0), _spell(string, fnt), font=fnt)
    return right - left, bottom - top


def nice_ticks(lo, hi, count=6):
    """About `count` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v <= hi + step * 0.5:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


class _Axes:
    """Maps data coordinates to pixels inside a frame, and draws the frame, ticks and labels."""

    def __init__(self, draw, box, xlim, ylim):
        self.draw, self.box = draw, box
        self.xt = nice_ticks(*xlim)
        self.yt = nice_ticks(*ylim)
        self.x0, self.x1 = min(self.xt[0], xlim[0]), max(self.xt[-1], xlim[1])
        self.y0, self.y1 = min(self.yt[0], ylim[0]), max(self.yt[-1], ylim[1])

    def px(self, x, y):
        left, top, right, bottom = self.box
        u = (x - self.x0) / ((self.x1 - self.x0) or 1)
        v = (y - self.y0) / ((self.y1 - self.y0) or 1)
        return left + u * (right - left), bottom - v * (bottom - top)

    def frame(self, title, xlabel, ylabel):
        d, (left, top, right, bottom) = self.draw, self.box
        small, big = font(12), font(15)
        for t in self.yt:
            _, y = self.px(self.x0, t)
            d.line([(left, y), (right, y)], fill=(232, 232, 232))
            label = _fmt(t)
            w, h = _text_size(d, label, small)
            d.text(
                (left - 6 - w, y - h / 2 - 2), _spell(label, small), fill=(60, 60, 60), font=small
            )
        for t in self.xt:
            x, _ = self.px(t, self.y0)
            d.line([(x, top), (x, bottom)], fill=(240, 240, 240))
            d.line([(x, bottom), (x, bottom + 4)], fill=(60, 60, 60))
            label = _fmt(t)
            w, _ = _text_size(d, label, small)
            d.text((x - w / 2, bottom + 6), _spell(label, small), fill=(60, 60, 60), font=small)
        d.rectangle(self.box, outline=(60, 60, 60))
        w, _ = _text_size(d, title, big)
        d.text(((left + right) / 2 - w / 2, top - 26), _spell(title, big), fill=(0, 0, 0), font=big)
        w, _ = _text_size(d, xlabel, small)
        d.text(
            ((left + right) / 2 - w / 2, bottom + 24),
            _spell(xlabel, small),
            fill=(0, 0, 0),
            font=small,
        )
        # the y label, rotated, left of the tick labels
        w, h = _text_size(d, ylabel, small)
        label = Image.new("RGBA", (w + 4, h + 6), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((2, 0), _spell(ylabel, small), fill=(0, 0, 0, 255), font=small)
        label = label.rotate(90, expand=True)
        d._image.paste(label, (4, int((top + bottom) / 2 - label.size[1] / 2)), label)

    def legend(self, entries, points=()):
        """entries: (label, colour, dashed). Drawn inside the frame in the corner that covers the
        fewest of `points` (pixel positions of the data)."""
        if not entries:
            return
        d, small = self.draw, font(12)
        width = max(_text_size(d, e[0], small)[0] for e in entries) + 40
        line_h = 17
        height = line_h * len(entries) + 6
        left_edge, top_edge, right_edge, bottom_edge = self.box

        def covered(corner):
            x0, y0 = corner
            return sum(
                x0 - 4 <= x <= x0 + width + 4 and y0 - 4 <= y <= y0 + height + 4 for x, y in points
            )

        corners = [
            (right_edge - width - 8, top_edge + 8),
            (right_edge - width - 8, bottom_edge - height - 8),
            (left_edge + 8, top_edge + 8),
            (left_edge + 8, bottom_edge - height - 8),
        ]
        left, top = min(corners, key=covered)
        d.rectangle(
            [left, top, left + width, top + height], fill=(255, 255, 255), outline=(180, 180, 180)
        )
        for i, (label, colour, dashed) in enumerate(entries):
            y = top + 6 + i * line_h + 6
            _line(d, [(left + 6, y), (left + 28, y)], colour, dashed)
            d.text((left + 34, y - 8), _spell(label, small), fill=(0, 0, 0), font=small)


def _line(draw, points, colour, dashed, width=2):
    if not dashed:
        draw.line(points, fill=colour, width=width)
        return
    for (xa, ya), (xb, yb) in itertools.pairwise(points):
        length = math.hypot(xb - xa, yb - ya)
        steps = max(int(length // 6), 1)
        for k in range(0, steps, 2):
            a, b = k / steps, min((k + 1) / steps, 1)
            draw.line(
                [
                    (xa + (xb - xa) * a, ya + (yb - ya) * a),
                    (xa + (xb - xa) * b, ya + (yb - ya) * b),
                ],
                fill=colour,
                width=width,
            )


def _canvas(width, height):
    image = Image.new("RGB", (width, height), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def line_chart(series, *, title, xlabel, ylabel, width=720, height=440, ylim=None, note=None):
    """Several series (Series) on shared axes, with a legend. Returns a PIL image."""
    image, draw = _canvas(width, height)
    xs = _finite(v for s in series for v in s.x) or [0.0, 1.0]
    ys = _finite(v for s in series for v in s.y) or [0.0, 1.0]
    if ylim is None:
        lo, hi = min(min(ys), 0.0), max(ys)
        ylim = (lo, hi + ((hi - lo) * 0.05 or 0.5))
    bottom = height - (66 if note else 50)  # a note gets its own line under the x label
    axes = _Axes(draw, (70, 44, width - 20, bottom), (min(xs), max(xs)), ylim)
    axes.frame(title, xlabel, ylabel)
    entries, points = [], []
    for i, s in enumerate(series):
        colour = s.colour or PALETTE[i % len(PALETTE)]
        run = []
        for x, y in list(zip(s.x, s.y, strict=True)) + [(None, None)]:
            if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
                if len(run) > 1:
                    _line(draw, run, colour, s.dashed)
                if s.markers:
                    for px, py in run:
                        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
                run = []
                continue
            if run:  # points along the segment, so the legend avoids lines too
                (xa, ya), (xb, yb) = run[-1], axes.px(x, y)
                points += [(xa + (xb - xa) * f / 8, ya + (yb - ya) * f / 8) for f in range(8)]
            run.append(axes.px(x, y))
            points.append(run[-1])
        entries.append((s.label, colour, s.dashed))
    axes.legend(entries, points)
    if note:
        draw.text((70, height - 18), _spell(note, font(11)), fill=(90, 90, 90), font=font(11))
    return image


def histogram_chart(groups, *, title, xlabel, bins=30, width=720, height=440, note=None):
    """Overlaid histograms (step outlines over light fills) of groups [(label, values)], on shared
    bins. Non-finite values are left out; callers say how many. Returns a PIL image."""
    finite = [(label, _finite(values)) for label, values in groups]
    everything = [v for _, values in finite for v in values] or [0.0, 1.0]
    lo, hi = min(everything), max(everything)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = (hi - lo) / bins
    counts = []
    for _, values in finite:
        c = [0] * bins
        for v in values:
            c[min(int((v - lo) / step), bins - 1)] += 1
        total = max(len(values), 1)
        counts.append([k / total for k in c])  # share of the group, so sizes compare
    top = max((max(c) for c in counts if c), default=1.0) or 1.0
    image = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    draw = ImageDraw.Draw(image)
    bottom = height - (66 if note else 50)  # a note gets its own line under the x label
    axes = _Axes(draw, (70, 44, width - 20, bottom), (lo, hi), (0.0, top * 1.08))
    axes.frame(title, xlabel, "share of images")
    entries, points = [], []
    for i, ((label, values), c) in enumerate(zip(finite, counts, strict=True)):
        colour = PALETTE[i % len(PALETTE)]
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        ldraw = ImageDraw.Draw(layer)
        outline = []
        for b, share in enumerate(c):
            xa, ya = axes.px(lo + b * step, share)
            xb, y0 = axes.px(lo + (b + 1) * step, 0.0)
            if share > 0:
                ldraw.rectangle([xa, ya, xb, y0], fill=colour + (40,))
            outline += [(xa, ya), (xb, ya)]
            points += [
                (xa + (xb - xa) * f / 4, ya + (y0 - ya) * g / 4)
                for f in range(5)
                for g in range(5)
                if share > 0
            ]
        image.alpha_composite(layer)
        draw = ImageDraw.Draw(image)
        draw.line(outline, fill=colour, width=2)
        entries.append((f"{label} (n={len(values)})", colour, False))
    axes.draw = draw
    axes.legend(entries, points)
    if note:
        draw.text((70, height - 18), _spell(note, font(11)), fill=(90, 90, 90), font=font(11))
    return image.convert("RGB")


def stack(images, vertical=True, gap=10):
    """Panels one under the other (or side by side) on white."""
    if vertical:
        width, height = max(i.size[0] for i in images), sum(i.size[1] for i in images)
        height += gap * (len(images) - 1)
    else:
        width, height = sum(i.size[0] for i in images), max(i.size[1] for i in images)
        width += gap * (len(images) - 1)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    offset = 0
    for panel in images:
        out.paste(panel.convert("RGB"), (0, offset) if vertical else (offset, 0))
        offset += (panel.size[1] if vertical else panel.size[0]) + gap
    return out


def label_rows(image, labels, top, step, width=None, header=None):
    """Put a text label left of each row of a grid image (rows start at `top`, every `step` px)."""
    fnt = font(12)
    probe = ImageDraw.Draw(image)
    width = (
        width
        or max([_text_size(probe, t, fnt)[0] for t in labels + ([header] if header else [])] + [0])
        + 12
    )
    head = 18 if header else 0
    out = Image.new("RGB", (image.size[0] + width, image.size[1] + head), (255, 255, 255))
    out.paste(image.convert("RGB"), (width, head))
    draw = ImageDraw.Draw(out)
    if header:
        draw.text((width, 2), _spell(header, fnt), fill=(0, 0, 0), font=fnt)
    for i, text in enumerate(labels):
        _, h = _text_size(draw, text, fnt)
        y = head + top + i * step + step / 2 - h / 2 - 2
        draw.text((4, y), _spell(text, fnt), fill=(0, 0, 0), font=fnt)
    return out


def text_lines(lines, width=720, size=11):
    """Lines of grey text on white, `width` px wide: notes under a chart that one note line
    cannot hold."""
    fnt = font(size)
    step = size + 5
    image, draw = _canvas(width, 8 + step * len(lines))
    for i, text in enumerate(lines):
        draw.text((70, 4 + i * step), _spell(text, fnt), fill=(90, 90, 90), font=fnt)
    return image
