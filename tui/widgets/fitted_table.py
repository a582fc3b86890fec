"""A table whose cells carry optional parts (a change, a 95% interval) shown only while every
column still fits the table's width: a narrow terminal keeps each number whole, a wide one
gets the intervals too."""

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


Row = tuple[str, Sequence[Cell]]
Group = str | tuple[str, str]


class FittedTable(DataTable):
    """`fill` the table with cells; optional parts go, least wanted first, until it fits."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._columns_spec: list[tuple[Text, str]] = []
        self._rows_spec: list[Row] = []
        self._groups: list[Group] = []
        self._shown: set[str] | None = None

    def fill(self, columns: Sequence[tuple[str | Text, str]], rows: Sequence[Row], groups: Sequence[Group]) -> None:
        """`columns`: (label, key); `rows`: (key, cells); `groups`: the optional parts, most
        wanted first, each a name or (name, the group it only makes sense beside)."""
        self._columns_spec = [(label if isinstance(label, Text) else Text(label), key) for label, key in columns]
        self._rows_spec = list(rows)
        self._groups = list(groups)
        self._draw(self._fitting(self._budget()))

    def _budget(self) -> int:
        width = self.size.width or self.app.size.width
        return width - self.scrollbar_size_vertical

    def _width(self, shown: set[str]) -> int:
        total = 0
        for index, (label, _) in enumerate(self._columns_spec):
            widest = max([label.cell_len] + [cells[index].width(shown) for _, cells in self._rows_spec if index < len(cells)])
            total += widest + 2 * self.cell_padding
        return total

    def _fitting(self, budget: int) -> set[str]:
        shown: set[str] = set()
        for group in self._groups:
            name, needs = (group, None) if isinstance(group, str) else group
            if (needs is None or needs in shown) and self._width(shown | {name}) <= budget:
                shown.add(name)
        return shown

    def _draw(self, shown: set[str]) -> None:
        row, column = self.cursor_row, self.cursor_column
        self._shown = shown
        self.clear(columns=True)
        for label, key in self._columns_spec:
            self.add_column(label, key=key)
        for key, cells in self._rows_spec:
            self.add_row(*(c.render(shown) for c in cells), key=key)
        if self._rows_spec:
            self.move_cursor(row=min(row, len(self._rows_spec) - 1), column=min(column, len(self._columns_spec) - 1))

    def on_resize(self, event: events.Resize) -> None:
        if self._columns_spec:
            shown = self._fitting(self._budget())
            if shown != self._shown:
                self._draw(shown)
