"""What every main screen shares: the navigation line, the device panel, the job bar and the footer."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from tui.widgets.device_panel import DevicePanel
from tui.widgets.job_bar import JobBar
from tui.widgets.nav_bar import NavBar

# (key, mode, label) of the main screens, in the order of their keys.
MODES = (
    ("1", "models", "Models"),
    ("2", "compress", "Compress"),
    ("3", "probe", "Probe"),
    ("4", "compare", "Compare"),
    ("5", "history", "History"),
)


class ModeScreen(Screen):
    """A main screen; subclasses compose their body in `compose_body`."""

    MODE = ""

    def compose(self) -> ComposeResult:
        yield NavBar(MODES, self.MODE)
        yield DevicePanel()
        yield from self.compose_body()
        yield JobBar()
        yield Footer(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_screen_resume(self) -> None:
        self.query_one(NavBar).refresh()
