"""What every main screen shares: the navigation line, the device panel, the job bar and the footer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Button, Footer, Input

from audit.paths import unknown_home
from tui.widgets.device_panel import DevicePanel
from tui.widgets.job_bar import JobBar
from tui.widgets.nav_bar import NavBar

T = TypeVar("T")

# (key, mode, label) of the main screens, in the order of their keys.
MODES = (
    ("1", "models", "Models"),
    ("2", "compress", "Compress"),
    ("3", "probe", "Probe"),
    ("4", "compare", "Compare"),
    ("5", "history", "History"),
    ("6", "check", "Check"),
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


class FormError(ValueError):
    """A form field the operator has to fix; the message names it, `field` is its id when
    the cursor should go back to it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def typed_path(text: str, label: str, field: str | None = None, *, absolute: bool = False) -> Path:
    """A path typed into a field, ~ expanded (and made absolute with `absolute`). pathlib raises
    on a ~user that is not a user here, a NUL character or a loop of symbolic links: a FormError
    instead, naming the field."""
    if "\0" in text:
        raise FormError(f"{label} holds a NUL character: type the path again", field)
    try:
        path = Path(text).expanduser()
        return path.resolve() if absolute else path
    except RuntimeError as error:
        if "loop" in str(error):
            raise FormError(f"{label} {text}: its symbolic links go round in a loop", field) from None
        raise FormError(f"{label} {unknown_home(text) or text}", field) from None


def waiting_for_model(app: Any) -> str | None:
    """What a screen that needs the model says while there is none: that it is loading, or
    where to load one; None once a model is loaded."""
    if app.session is not None:
        return None
    if app.loading:
        return "loading the model… fill in the form meanwhile; ctrl+r runs it once loaded"
    return "no model loaded: choose one on screen 1"


class FormScreen(ModeScreen):
    """A main screen whose form starts a job on the loaded model (Compress, Probe): enter moves
    to the next field, ctrl+r or the #run button reads the form."""

    @on(Input.Submitted)
    def _next_field(self) -> None:
        self.focus_next()

    def read_form(self, read: Callable[[], T]) -> tuple[Any, T] | None:
        """(session, what `read` makes of the form), or None after a notice that says what to do."""
        # Off the text fields, so that the screen keys (1-5, q, ?) work again at once.
        self.query_one("#run", Button).focus()
        session = self.app.session  # type: ignore[attr-defined]
        if session is None:
            if self.app.loading:  # type: ignore[attr-defined]
                self.notify("the model is still loading: run this once screen 1 shows it loaded", severity="warning")
            else:
                self.notify("load a model first (screen 1)", severity="warning")
            return None
        try:
            return session, read()
        except FormError as error:
            self.notify(str(error), title=self.MODE, severity="error")
            if error.field is not None:
                field = self.query_one(f"#{error.field}", Input)
                field.focus()
                field.select_all()
            return None

    def job_started(self, results: str) -> None:
        """Once the form's job runs, the cursor leaves the Run button for `results` (a widget
        id), so that enter pressed again does not start the same job a second time."""
        self.query_one(f"#{results}").focus()
