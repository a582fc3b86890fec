"""A table that fits the width it has without cutting a cell: columns that do not fit are left
out (the least important first, and said so under the table), then optional parts of the cells
(a change, a 95% interval) are shown while every column still fits. A narrow terminal keeps each
number whole, a wide one gets the intervals too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rich.text import Text
from textual import events
from textual.widgets import DataTable


@dataclass(frozen=True)
class Cell:
    text: Text
    # (group, part): a group's parts are shown or left out together, in every cell.
    extras: tuple[tuple[str, Text], ...] = ()
    # (group, text): said more fully, in place of `text`, while its group is shown.
    fuller: tuple[str, Text] | None = None

    def render(self, shown: set[str]) -> Text:
        out = self.fuller[1].copy() if self.fuller and self.fuller[0] in shown else self.text.copy()
        for group, part in self.extras:
            if group in shown and part.plain:
                out.append(" ")
                out.append_text(part)
        return out

    def width(self, shown: set[str]) -> int:
        return self.render(shown).cell_len


def cell(text: str | Text = "", style: str = "", *extras: tuple[str, Text]) -> Cell:
    return Cell(text if isinstance(text, Text) else Text(text, style=style), tuple(extras))


# The most cells a method's label takes in a table: "wanda (except *.o_proj, *.down_proj)" is cut
# with an ellipsis (the variant's name beside it tells variants apart), so the table's other
# columns stay on an 80-column screen.
METHOD_CELLS = 24


def method_cell(method: str) -> Text:
    """A method's label for a table cell, at most METHOD_CELLS wide."""
    text = Text(method)
    text.truncate(METHOD_CELLS, overflow="ellipsis")
    return text


def labelled(labels: Sequence[str]) -> list[tuple[Text, None]]:
    """`add_sized` columns of plain labels, without keys."""
    return [(Text(label), None) for label in labels]


def add_sized(table: DataTable, columns: Sequence[tuple[Text, str | None]], rows: Sequence[tuple[str | None, Sequence[Text]]],
              least: Sequence[int] = ()) -> None:
    """Add `columns` ((label, key)) and `rows` ((key, cells)) to `table`, each column given the
    width of its widest cell or label (or `least[i]`, when more). A DataTable left to size its
    columns itself measures them only once it is idle: drawn before then (a busy device, a
    screen captured at once), its columns are as wide as their labels and every longer cell is
    cut."""
    widths = [max(label.cell_len, least[index] if index < len(least) else 0) for index, (label, _) in enumerate(columns)]
    for _, cells in rows:
        for index, text in enumerate(cells[: len(widths)]):
            widths[index] = max(widths[index], text.cell_len)
    for (label, key), width in zip(columns, widths):
        table.add_column(label.copy(), key=key, width=width)
    for key, cells in rows:
        table.add_row(*cells, key=key)


Row = tuple[str, Sequence[Cell]]
Group = str | tuple[str, str]


@dataclass(frozen=True)
class Layout:
    """What the table shows at one width: the columns kept (indexes into the columns given),
    the optional groups shown, and the labels of the columns left out."""

    kept: tuple[int, ...]
    shown: frozenset[str]
    left_out: tuple[str, ...]


class FittedTable(DataTable):
    """`fill` the table; it keeps fitting its width as the terminal is resized.

    By default the columns left out for room are the rightmost ones (never the first, which names
    the rows); a table passes `drop` to say which go first. What was left out is said on the
    table's bottom edge (`left_out_note`), or, with `NOTE_IN_CORNER`, in the header of the first
    column, where it takes no row."""

    DEFAULT_CSS = """
    FittedTable.-left-out {
        border-bottom: solid $panel-lighten-2;
        border-subtitle-align: left;
        border-subtitle-color: $text-muted;
    }
    """

    NOTE_IN_CORNER = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._columns_spec: list[tuple[Text, str]] = []
        self._rows_spec: list[Row] = []
        self._groups: list[Group] = []
        self._drop: list[str] | None = None
        self._layout: Layout | None = None

    def fill(
        self,
        columns: Sequence[tuple[str | Text, str]],
        rows: Sequence[Row],
        groups: Sequence[Group],
        drop: Sequence[str] | None = None,
    ) -> None:
        """`columns`: (label, key); `rows`: (key, cells); `groups`: the optional parts, most
        wanted first, each a name or (name, the group it only makes sense beside); `drop`: the
        keys of the columns that may be left out when they do not fit, least important first
        (by default every column but the first, from the right)."""
        # The column under the cursor, found among the columns shown before they are replaced.
        cursor_key = self._cursor_key()
        self._columns_spec = [(label if isinstance(label, Text) else Text(label), key) for label, key in columns]
        self._rows_spec = list(rows)
        self._groups = list(groups)
        self._drop = None if drop is None else list(drop)
        self._layout = None
        self._draw(self.fitting(self._budget()), cursor_key)

    def refit(self, drop: Sequence[str] | None = None) -> None:
        """Fit again (drawn again only if what fits changed), with a new order of the columns
        to leave out when given."""
        if drop is not None:
            self._drop = list(drop)
        if not self._columns_spec:
            return
        layout = self.fitting(self._budget())
        if layout != self._layout:
            self._draw(layout, self._cursor_key())

    # -- what fits ---------------------------------------------------------------------------
    @property
    def shown_keys(self) -> list[str]:
        """The keys of the columns on screen, in their order."""
        if self._layout is None:
            return []
        return [self._columns_spec[index][1] for index in self._layout.kept]

    @property
    def left_out(self) -> tuple[str, ...]:
        """The labels of the columns left out for room."""
        return () if self._layout is None else self._layout.left_out

    def left_out_note(self, labels: Sequence[str]) -> str:
        """What the table says of the columns it left out; a table that knows where they are
        shown in full says where."""
        return f"left out for room: {', '.join(labels)}"

    def _budget(self) -> int:
        # The room the rows have (the table's, inside its edges; the screen's before it is laid
        # out), less the vertical scrollbar when one shows.
        width = self.size.width or self.app.size.width
        return width - self.scrollbar_size_vertical

    def _drop_order(self) -> list[str]:
        if self._drop is not None:
            return self._drop
        return [key for _, key in self._columns_spec[1:]][::-1]

    def _column_width(self, index: int, shown: set[str], label: Text) -> int:
        cells = [cells[index].width(shown) for _, cells in self._rows_spec if index < len(cells)]
        return max([label.cell_len, *cells]) + 2 * self.cell_padding

    def _width(self, kept: Sequence[int], shown: set[str], corner: str = "") -> int:
        total = 0
        for position, index in enumerate(kept):
            label = self._columns_spec[index][0]
            if position == 0 and corner:
                label = Text(corner)
            total += self._column_width(index, shown, label)
        return total

    def _corner(self, left_out: Sequence[str]) -> str:
        return self.left_out_note(left_out) if self.NOTE_IN_CORNER and left_out else ""

    def fitting(self, budget: int) -> Layout:
        """The columns and groups to show in `budget` cells: first the columns that fit with no
        optional part (leaving out the least important first), then the optional parts, most
        wanted first, while the kept columns still fit."""
        keys = [key for _, key in self._columns_spec]
        kept = list(range(len(keys)))
        for key in self._drop_order():
            if self._width(kept, set(), self._corner(self._labels_left_out(kept))) <= budget:
                break
            if key in keys and keys.index(key) in kept and len(kept) > 1:
                kept.remove(keys.index(key))
        left_out = self._labels_left_out(kept)
        corner = self._corner(left_out)
        shown: set[str] = set()
        for group in self._groups:
            name, needs = (group, None) if isinstance(group, str) else group
            if (needs is None or needs in shown) and self._width(kept, shown | {name}, corner) <= budget:
                shown.add(name)
        return Layout(tuple(kept), frozenset(shown), left_out)

    def _labels_left_out(self, kept: Sequence[int]) -> tuple[str, ...]:
        return tuple(label.plain for index, (label, _) in enumerate(self._columns_spec) if index not in kept)

    # -- drawing -----------------------------------------------------------------------------
    def _cursor_key(self) -> str | None:
        keys = self.shown_keys
        return keys[self.cursor_column] if 0 <= self.cursor_column < len(keys) else None

    def _draw(self, layout: Layout, cursor_key: str | None) -> None:
        """Draw the columns and parts of `layout`, the cursor kept on its row and on the column
        `cursor_key` while it is shown."""
        row = self.cursor_row
        self._layout = layout
        shown = set(layout.shown)
        self.clear(columns=True)
        corner = self._corner(layout.left_out)
        columns = []
        for position, index in enumerate(layout.kept):
            label, key = self._columns_spec[index]
            columns.append((Text(corner, style="italic") if position == 0 and corner else label, key))
        add_sized(self, columns, [(key, [cells[index].render(shown) for index in layout.kept if index < len(cells)])
                                  for key, cells in self._rows_spec])
        note = "" if self.NOTE_IN_CORNER or not layout.left_out else self.left_out_note(layout.left_out)
        self.set_class(bool(note), "-left-out")
        self.border_subtitle = note
        if self._rows_spec and layout.kept:
            keys = self.shown_keys
            column = keys.index(cursor_key) if cursor_key in keys else min(self.cursor_column, len(keys) - 1)
            self.move_cursor(row=min(row, len(self._rows_spec) - 1), column=max(column, 0))

    def on_resize(self, event: events.Resize) -> None:
        self.refit()

    def watch_show_vertical_scrollbar(self, shown: bool) -> None:
        # Rows added past the table's height bring a scrollbar, which takes room from the columns.
        self.call_after_refresh(self.refit)
