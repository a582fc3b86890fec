"""Small self-contained SVG charts (lines with markers, grouped bars with intervals) for reports."""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

WIDTH, HEIGHT = 640, 340
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 40, 56
LEGEND_CHARS = 20  # what the right margin holds at font size 11
CHAR_W = 6.5  # about the width of a character at font size 11


def _cut(text: str, chars: int) -> str:
    """`text` in at most `chars` characters, a longer one cut with an ellipsis."""
    return text if len(text) <= chars else text[: chars - 1] + "…"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5:
        # From a hundred thousand as 1e5: a tick label stays clear of the axis title in the margin.
        return f"{value:.2g}".replace("e+0", "e").replace("e+", "e")
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten covering [low, high] (both positive)."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    if last == first:
        last += 1
    return [10.0**k for k in range(first, last + 1)]


class _Frame:
    def __init__(self, title: str, x_label: str, y_label: str, y_low: float, y_high: float, log_y: bool = False) -> None:
        self.log_y = log_y
        self.ticks = log_ticks(y_low, y_high) if log_y else nice_ticks(y_low, y_high)
        self.y_low, self.y_high = self.ticks[0], self.ticks[-1]
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
            f"<title>{escape(title)}</title>",
            f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
            f'<text x="{WIDTH / 2 - RIGHT / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
        ]
        plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
        self.plot_w, self.plot_h = plot_w, plot_h
        for tick in self.ticks:
            y = self.y(tick)
            self.parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
            self.parts.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_fmt(tick)}</text>')
        self.parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#333"/>')
        self.parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#333"/>')
        self.parts.append(
            f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 12}" text-anchor="middle" font-size="12">{escape(x_label)}</text>'
        )
        self.parts.append(
            f'<text transform="translate(16 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle" font-size="12">{escape(y_label)}</text>'
        )

    def y(self, value: float) -> float:
        if self.log_y:
            low, high = math.log10(self.y_low), math.log10(self.y_high)
            value = math.log10(max(value, self.y_low))
        else:
            low, high = self.y_low, self.y_high
        return TOP + self.plot_h * (1 - (value - low) / ((high - low) or 1.0))

    def legend(self, names: Sequence[str]) -> None:
        for i, name in enumerate(names):
            y = TOP + 8 + i * 18
            x = WIDTH - RIGHT + 14
            self.parts.append(f'<rect x="{x}" y="{y - 9}" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>')
            # The margin holds about 20 characters: a longer name is cut, whole in its tooltip.
            self.parts.append(
                f'<text class="legend" x="{x + 18}" y="{y + 1}" font-size="11">{escape(_cut(name, LEGEND_CHARS))}<title>{escape(name)}</title></text>'
            )

    def close(self) -> str:
        self.parts.append("</svg>")
        return "\n".join(self.parts)


def _with_interval(point: Sequence[float | None]) -> tuple[float, float, float | None, float | None]:
    """(x, y, low, high) from an (x, y) or (x, y, low, high) point."""
    x, y = point[0], point[1]
    low, high = (tuple(point[2:4]) + (None, None))[:2]
    return float(x), float(y), low, high


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def line_chart(
    title: str,
    series: dict[str, Sequence[Sequence[float | None]]],
    *,
    x_label: str,
    y_label: str,
    log_y: bool = False,
    empty: str = "no data",
) -> str:
    """One line with markers per series; points are (x, y) or (x, y, low, high). A point's
    interval is drawn as an error bar in its series' colour, and the y axis covers it; an end
    given as None is open, its bar running to the edge of the plot without a cap. With intervals
    and several series, each series is shifted a few pixels sideways so bars at one x stay apart.
    `log_y` for values spanning orders of magnitude (perplexity), where all values are positive.
    `empty` is the message shown when no series has a point."""
    lines = {
        name: sorted((_with_interval(p) for p in values if _finite(p[1])), key=lambda p: (p[0], p[1]))
        for name, values in series.items()
    }
    points = [p for values in lines.values() for p in values]
    if not points:
        return empty_chart(title, empty)
    ys = [p[1] for p in points]
    xs = [p[0] for p in points]
    log_y = log_y and min(ys) > 0
    bounds = [b for p in points for b in p[2:] if _finite(b) and (b > 0 or not log_y)]
    span = ys + bounds
    frame = _Frame(title, x_label, y_label, min(span) if log_y else min(0.0, min(span)), max(span), log_y)
    x_ticks = nice_ticks(min(0.0, min(xs)), max(xs) if max(xs) > 0 else 1.0)
    x_low, x_high = x_ticks[0], x_ticks[-1]

    def x_of(value: float) -> float:
        return LEFT + frame.plot_w * (value - x_low) / ((x_high - x_low) or 1.0)

    for tick in x_ticks:
        x = x_of(tick)
        frame.parts.append(f'<text x="{x:.1f}" y="{TOP + frame.plot_h + 16}" text-anchor="middle" font-size="11">{_fmt(tick)}</text>')
    with_intervals = any(low is not None or high is not None for _, _, low, high in points)
    step = 6.0 if with_intervals and len(lines) > 1 else 0.0
    for i, (name, values) in enumerate(lines.items()):
        colour = PALETTE[i % len(PALETTE)]
        shift = (i - (len(lines) - 1) / 2) * step
        for x, _, low, high in values:
            if (low is None and high is None) or low == high:
                continue
            cx = x_of(x) + shift
            ends = [(frame.y(b), True) if _finite(b) else (frame.y(edge), False) for b, edge in ((low, frame.y_low), (high, frame.y_high))]
            frame.parts.append(
                f'<line class="interval" x1="{cx:.1f}" x2="{cx:.1f}" y1="{ends[0][0]:.1f}" y2="{ends[1][0]:.1f}" '
                f'stroke="{colour}" stroke-width="1.5" stroke-opacity="0.75"/>'
            )
            for y, capped in ends:
                if capped:
                    frame.parts.append(
                        f'<line class="cap" x1="{cx - 4:.1f}" x2="{cx + 4:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="1.5"/>'
                    )
        if len(values) > 1:
            path = " ".join(f"{x_of(x) + shift:.1f},{frame.y(y):.1f}" for x, y, _, _ in values)
            frame.parts.append(f'<polyline class="series" points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y, low, high in values:
            bounds_text = "" if low is None and high is None else f" [{_end(low, '-inf')}, {_end(high, 'inf')}]"
            frame.parts.append(
                f'<circle class="point" cx="{x_of(x) + shift:.1f}" cy="{frame.y(y):.1f}" r="4" fill="{colour}">'
                f"<title>{escape(name)}: x={_fmt(x)}, y={_fmt(y)}{bounds_text}</title></circle>"
            )
    frame.legend(list(lines))
    return frame.close()


def _end(value: float | None, open_end: str) -> str:
    return _fmt(value) if _finite(value) else open_end


def bar_chart(
    title: str,
    groups: Sequence[str],
    series: dict[str, Sequence[tuple[float | None, float | None, float | None]]],
    *,
    y_label: str,
) -> str:
    """Grouped bars: for each group one bar per series; values are (value, low, high), the
    interval drawn as an error bar when given."""
    values = [v for vals in series.values() for triple in vals for v in triple if v is not None and math.isfinite(v)]
    if not values or not groups:
        return empty_chart(title, "no data")
    frame = _Frame(title, "", y_label, min(0.0, min(values)), max(values))
    n_series = max(len(series), 1)
    group_w = frame.plot_w / len(groups)
    bar_w = max(2.0, group_w * 0.8 / n_series)
    zero = frame.y(max(0.0, frame.y_low))
    fits = max(4, int(group_w / CHAR_W))  # characters of a group's label under its bars
    for g, group in enumerate(groups):
        gx = LEFT + g * group_w + group_w * 0.1
        label_y = TOP + frame.plot_h + 16
        frame.parts.append(
            f'<text x="{gx + group_w * 0.4:.1f}" y="{label_y}" text-anchor="middle" font-size="11">{escape(_cut(group, fits))}'
            f"<title>{escape(group)}</title></text>"
        )
        for s, (name, triples) in enumerate(series.items()):
            value, low, high = triples[g] if g < len(triples) else (None, None, None)
            if value is None or not math.isfinite(value):
                continue
            colour = PALETTE[s % len(PALETTE)]
            x = gx + s * bar_w
            top = frame.y(value)
            y, h = min(top, zero), abs(zero - top)
            frame.parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w * 0.9:.1f}" height="{max(h, 0.5):.1f}" fill="{colour}">'
                f"<title>{escape(name)} / {escape(group)}: {_fmt(value)}</title></rect>"
            )
            if low is not None and high is not None:
                cx = x + bar_w * 0.45
                frame.parts.append(
                    f'<line class="interval" x1="{cx:.1f}" x2="{cx:.1f}" y1="{frame.y(low):.1f}" y2="{frame.y(high):.1f}" stroke="#222"/>'
                )
                for bound in (low, high):
                    frame.parts.append(
                        f'<line x1="{cx - 3:.1f}" x2="{cx + 3:.1f}" y1="{frame.y(bound):.1f}" y2="{frame.y(bound):.1f}" stroke="#222"/>'
                    )
    frame.legend(list(series))
    return frame.close()


def empty_chart(title: str, message: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart empty" viewBox="0 0 {WIDTH} 80" width="{WIDTH}" height="80">'
        f'<text x="10" y="30" font-size="15" font-weight="bold">{escape(title)}</text>'
        f'<text x="10" y="56" font-size="12" fill="#666">{escape(message)}</text></svg>'
    )
