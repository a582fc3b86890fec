"""The top line: the app's screens with their keys, the one shown highlighted, and the session."""

from __future__ import annotations

from typing import Sequence

from rich.text import Text
from textual.widget import Widget


class NavBar(Widget):
    DEFAULT_CSS = """
    NavBar {
        height: 1;
        background: $primary-background;
    }
    """

    def __init__(self, modes: Sequence[tuple[str, str, str]], current: str, **kwargs) -> None:
        """`modes`: (key, mode name, label) in order; `current`: the mode this bar sits on."""
        super().__init__(**kwargs)
        self.modes = list(modes)
        self.current = current

    def on_mount(self) -> None:
        if hasattr(self.app, "session_rev"):
            self.watch(self.app, "session_rev", lambda _rev: self.refresh(), init=False)

    def render(self) -> Text:
        line = Text(" edge-audit ", style="bold")
        for key, mode, label in self.modes:
            style = "bold reverse" if mode == self.current else ""
            line.append(" ")
            line.append(f" {key} {label} ", style=style)
        info = getattr(self.app, "session_caption", lambda: "")()
        width = self.size.width
        if info and line.cell_len + len(info) + 3 <= width:
            line.append(" " * (width - line.cell_len - len(info) - 1))
            line.append(info, style="dim")
        line.truncate(max(width, 1))
        return line

    def on_click(self, event) -> None:
        # Mouse is optional: a click on a label switches to its screen.
        x = event.x - len(" edge-audit ")
        for key, mode, label in self.modes:
            width = len(f" {key} {label} ") + 1
            if 0 <= x < width:
                self.app.switch_mode(mode)
                return
            x -= width
