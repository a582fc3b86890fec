"""A checkbox that says whether it is ticked in characters, "[x]" or "[ ]", not by colour alone:
Textual's own shows the same "X" either way, in another colour."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox

TICKED = "x"
UNTICKED = " "


class MarkedCheckbox(Checkbox):
    """Used for every checkbox of the app, so that each reads the same on a monochrome
    terminal, to a colour-blind operator, and in a screenshot."""

    DEFAULT_CSS = """
    MarkedCheckbox > .toggle--button {
        background: transparent;
    }
    """

    @property
    def _button(self) -> Content:
        mark = TICKED if self.value else UNTICKED
        return Content.assemble("[", (mark, self.get_visual_style("toggle--button")), "]")
