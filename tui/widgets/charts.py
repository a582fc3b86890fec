"""The sweep's curves against sparsity: SRS (mean over categories), the bias-ward transition rate
and perplexity over the baseline's (log scale), one line per pruning method from the baseline at sparsity 0, each
measured point with its 95% interval as a thin vertical bar."""

from __future__ import annotations

from typing import Any, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container
from textual.content import Content
from textual.events import Resize
from textual.widgets import Static
from textual_plotext import PlotextPlot

from audit.sweep import CURVES, DENSE, LOG_CURVES, curves

RGB = tuple[int, int, int]
Point = tuple[float, float, float | None, float | None]

# One colour per method, the same in every chart (and in its key); the baseline's interval grey.
PALETTE: tuple[RGB, ...] = ((86, 156, 255), (255, 159, 67), (214, 110, 255), (72, 201, 130), (255, 99, 132), (0, 200, 200))
BASELINE_COLOUR: RGB = (150, 150, 150)
# Bars of methods measured at the same sparsity sit side by side, this many character columns apart.
BAR_STEP = 1.5
NOT_MEASURED = "no pruned variant measured yet"
NOTHING_TO_PLOT = "no pruned variant to plot"
# Room the three charts need side by side (cells of the chart area); below it, one at a time.
ALL_WIDTH, ALL_HEIGHT = 105, 14
# The key's width beside its plot (as in the app's stylesheet), when the key has not been laid out.
KEY_WIDTH = 28


def _hex(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def method_colours(points: Sequence[dict[str, Any]]) -> dict[str, RGB]:
    """The colour of each pruning method of the sweep, in the order of its points."""
    methods = list(dict.fromkeys(str(p["method"]) for p in points if p["method"] != DENSE))
    return {method: PALETTE[i % len(PALETTE)] for i, method in enumerate(methods)}


def left_out(points: Sequence[dict[str, Any]], curve: str) -> dict[str, list[str]]:
    """Per method, the pruned points the curve cannot show and why: "0.5 too degraded"."""
    figure = CURVES[curve][2]
    out: dict[str, list[str]] = {}
    for point in points:
        if point["method"] == DENSE or point.get(figure) is not None:
            continue
        if point.get("degraded"):
            why = "too degraded"
        elif not point.get("comparable", True):
            why = "not comparable"
        else:
            why = "not measured yet"
        where = "?" if point.get("sparsity") is None else f"{float(point['sparsity']):g}"
        out.setdefault(str(point["method"]), []).append(f"{where} {why}")
    return out


def heading(curve: str) -> str:
    """What a chart plots: its title, in percent when its y label is, against sparsity."""
    title, y_label, _ = CURVES[curve]
    unit = " (%)" if y_label.endswith("%") and "%" not in title else ""
    return f"{title}{unit} vs sparsity"


def is_measured(lines: dict[str, list[Point]]) -> bool:
    """Whether a line has a point beyond the baseline."""
    return any(p[0] > 0 for line in lines.values() for p in line)


class SweepPlot(PlotextPlot):
    """The plot of one curve. `segments` keeps what was drawn, (kind, method, xs, ys) with kind
    "line" or "interval", as given to plotext; `column` is the x range of one character column."""

    def __init__(self, log_scale: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_scale = log_scale  # a log scale (`audit.sweep.LOG_CURVES`)
        self.segments: list[tuple[str, str, list[float], list[float]]] = []
        self.column = 0.0
        self._data: tuple[dict[str, list[Point]], dict[str, RGB], list[float]] = ({}, {}, [])

    def draw(self, lines: dict[str, list[Point]], colours: dict[str, RGB], sparsities: Sequence[float]) -> None:
        self._data = (lines, colours, list(sparsities))
        self._build(self.size.width or 60)
        self.refresh()

    def render(self) -> Any:
        # Made again for each drawing: bars side by side must fall in different character columns
        # at each width, and plotext scales the data in place when it draws on a log scale (a
        # second drawing of the same figure, at a new height, would take the log of the log).
        if self.size.width:
            self._build(self.size.width)
        return super().render()

    def _segment(self, kind: str, method: str, xs: list[float], ys: list[float], colour: RGB) -> None:
        self.segments.append((kind, method, xs, ys))
        self.plt.plot(xs, ys, marker="braille", color=colour)

    def _build(self, width: int) -> None:
        lines, colours, sparsities = self._data
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self.segments = []
        span = max(sparsities, default=0.0) or 1.0
        # The x range takes the bars' offsets and a column each side; solved for the range whose
        # columns the offsets are measured in (the plot is the width less its y ticks and frame).
        canvas = max(width - 8, 12)
        half = (len(lines) - 1) / 2 * BAR_STEP + 1
        total = span / (1 - 2 * half / canvas) if canvas > 4 * half else 1.5 * span
        self.column = total / canvas
        shift = {method: (i - (len(lines) - 1) / 2) * BAR_STEP * self.column for i, method in enumerate(lines)}
        for method, line in lines.items():
            self._segment("line", method, [p[0] for p in line], [p[1] for p in line], colours.get(method, PALETTE[0]))
        baseline_drawn = False
        for method, line in lines.items():
            for x, value, low, high in line:
                bottom = value if low is None else float(low)
                top = value if high is None else float(high)
                if top <= bottom:
                    continue
                if x == 0:
                    # Every method starts from the same baseline: its interval once, in grey.
                    if not baseline_drawn:
                        self._segment("interval", DENSE, [0.0, 0.0], [bottom, top], BASELINE_COLOUR)
                        baseline_drawn = True
                    continue
                at = x + shift[method]
                self._segment("interval", method, [at, at], [bottom, top], colours.get(method, PALETTE[0]))
        if self.log_scale:
            plt.yscale("log")
        ticks = sorted(set(sparsities) | {0.0})
        plt.xticks(ticks, [f"{s:g}" for s in ticks])
        pad = (total - span) / 2
        plt.xlim(-pad, span + pad)


class SweepChart(Container):
    """One curve: its plot, then its key (what is plotted, the methods in their colours, the
    points left out) beside it, or below it when the charts stand side by side: never over the
    lines. A key with more lines than the chart has rows is said more briefly (`KEY_FORMS`)."""

    def __init__(self, curve: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.curve = curve
        self.position = ""
        self.lines: dict[str, list[Point]] = {}
        self._key = Text()
        self._parts: tuple[dict[str, RGB], dict[str, list[str]], bool] = ({}, {}, False)

    def compose(self) -> ComposeResult:
        yield SweepPlot(log_scale=self.curve in LOG_CURVES, classes="chart-plot")
        yield Static(classes="chart-key")

    @property
    def plot(self) -> SweepPlot:
        return self.query_one(SweepPlot)

    @property
    def key(self) -> Text:
        """The key in full, as the chart says it with room."""
        return self._key

    def show(self, points: Sequence[dict[str, Any]], lines: dict[str, list[Point]]) -> None:
        """Plot `lines` (`audit.sweep.curves` of `points`, this chart's curve)."""
        self.lines = lines
        colours = method_colours(points)
        notes = left_out(points, self.curve)
        measured = is_measured(lines)
        self.set_class(not measured, "-empty")
        self.plot.display = measured
        if measured:
            sparsities = [float(p["sparsity"]) for p in points if p.get("sparsity") is not None]
            self.plot.draw(lines, colours, sparsities)
        else:
            self.plot.draw({}, colours, [])
        self._parts = (colours, notes, measured)
        self._key = key_text(self.curve, colours, notes, measured)
        self.refresh_key()

    def set_position(self, position: str) -> None:
        """"1 of 3" when the charts are shown one at a time, "" when all are."""
        self.position = position
        self.refresh_key()

    @property
    def key_widget(self) -> Static:
        return self.query_one(".chart-key", Static)

    def key_width(self) -> int:
        """The cells a line of the key has: its own once laid out, else what it will have."""
        widget = self.key_widget
        if widget.size.width:
            return widget.size.width
        return (KEY_WIDTH if self.key_beside else self.size.width) - widget.styles.gutter.width

    def key_lines(self, text: Text, width: int | None = None) -> int:
        """The rows `text` takes in the key, wrapped as the key wraps it, at `width` cells (by
        default the key's)."""
        width = self.key_width() if width is None else width
        return Content.from_rich_text(text).get_height(self.key_widget.styles, max(width, 1))

    def fitted_key(self, width: int, rows: int | None) -> Text:
        """The fullest form of the key that fits `rows` rows of `width` cells (any, with None)."""
        forms = [key_text(self.curve, *self._parts, form=form, position=self.position, width=width) for form in KEY_FORMS]
        if rows is None:
            return forms[0]
        return next((text for text in forms if self.key_lines(text, width) <= rows), forms[-1])

    @property
    def key_beside(self) -> bool:
        """Whether the key stands beside the plot (one chart at a time), not below it."""
        return not (isinstance(self.parent, SweepCharts) and self.parent.all_shown)

    def refresh_key(self) -> None:
        """Say the key in the fullest form that fits where it stands: beside the plot it has the
        chart's rows; below it, as many as it needs."""
        rows = self.size.height if self.key_beside and self.size.height else None
        self.key_widget.update(self.fitted_key(self.key_width(), rows))

    def on_resize(self, event: Resize) -> None:
        self.refresh_key()


# The forms of a key, fullest first: all of it; without the line on the interval bars; with a
# count of the points each method leaves out in place of their list; with each method's name
# cut to a line of the key ("wanda (except *.o_proj, *.down_proj)" is one method).
KEY_FORMS = ("full", "no interval", "counts", "short")


def key_text(
    curve: str, colours: dict[str, RGB], notes: dict[str, list[str]], measured: bool, form: str = "full", position: str = "",
    width: int | None = None,
) -> Text:
    """A chart's key: its heading (and "· 1 of 3" when shown one at a time), each method in its
    colour with the points it leaves out, and what the bars are, in one of `KEY_FORMS` (the
    "short" one cuts each method's line to `width` cells)."""
    text = Text(heading(curve), style="bold")
    if position:
        text.append(f" · {position}", style="dim")
    if not measured:
        why = NOT_MEASURED if all(n.endswith("not measured yet") for ns in notes.values() for n in ns) else NOTHING_TO_PLOT
        text.append(f"\n{why}", style="italic")
    for method, colour in colours.items():
        if not measured and method not in notes:
            continue
        line = Text()
        line.append("━━ ", style=_hex(colour))
        line.append(method)
        if notes.get(method):
            said = ", ".join(notes[method]) if form in ("full", "no interval") else f"{len(notes[method])} not plotted"
            line.append(f": {said}", style="dim")
        if form == "short" and width:
            line.truncate(width, overflow="ellipsis")
        text.append("\n")
        text.append_text(line)
    if measured and form == "full":
        text.append("\n")
        text.append("│", style=_hex(BASELINE_COLOUR))
        text.append(" 95% interval", style="dim")
    return text


class SweepCharts(Container):
    """The three curves: side by side when the area has room for them, else one at a time
    (`cycle` shows the next)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.current = 0
        self.all_shown = False

    def compose(self) -> ComposeResult:
        for curve in CURVES:
            yield SweepChart(curve, id=f"chart-{curve}")

    @property
    def charts(self) -> list[SweepChart]:
        return list(self.query(SweepChart))

    def show(self, points: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[Point]]]:
        """Plot the sweep's `points` (`audit.sweep.sweep_points`); returns their curves."""
        lines = curves(points)
        for chart in self.charts:
            chart.show(points, lines.get(chart.curve, {}))
        self.call_after_refresh(self._line_up_keys)
        return lines

    def cycle(self) -> None:
        self.current = (self.current + 1) % len(CURVES)
        self._arrange()

    def shown(self) -> list[str]:
        """The curves on screen."""
        return [chart.curve for chart in self.charts if chart.display]

    def on_resize(self, event: Resize) -> None:
        all_shown = event.size.width >= ALL_WIDTH and event.size.height >= ALL_HEIGHT
        if all_shown != self.all_shown:
            self.all_shown = all_shown
            self.screen.refresh_bindings()
        self._arrange()

    def on_mount(self) -> None:
        self._arrange()

    def _arrange(self) -> None:
        self.set_class(self.all_shown, "-all")
        count = len(CURVES)
        for index, chart in enumerate(self.charts):
            chart.display = self.all_shown or index == self.current
            chart.set_position("" if self.all_shown else f"{index + 1} of {count}")
        self.call_after_refresh(self._line_up_keys)

    def _line_up_keys(self) -> None:
        """Side by side, every key below its plot takes as many rows as the longest, so that the
        three plots have one height and their axes line up; one at a time, the key beside the
        plot takes the chart's rows (the stylesheet's)."""
        charts = [chart for chart in self.charts if chart.display]
        rows = 0
        if self.all_shown:
            rows = max((chart.key_lines(chart.key) for chart in charts if chart.size.width), default=0)
        for chart in self.charts:
            chart.key_widget.styles.height = rows if rows else None
            chart.refresh_key()
