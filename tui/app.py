"""The edge-audit Textual app: opens on a model, loads it in a worker and shows its facts."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static
from textual.worker import Worker, WorkerState

from audit.errors import Cancelled
from audit.models import LanguageModel, LoadOptions, load_model
from audit.models.aliases import DEFAULT_ALIAS
from audit.progress import Progress


@dataclass
class LoadProgress(Message):
    event: Progress


@dataclass
class ModelLoaded(Message):
    model: LanguageModel


class EdgeAuditApp(App[int]):
    TITLE = "edge-audit"
    CSS = """
    #status { padding: 0 1; height: auto; }
    #progress { margin: 0 1; }
    #facts { margin: 1 1; height: auto; }
    #notes { padding: 0 1; color: $warning; height: auto; }
    """
    BINDINGS = [Binding("q", "quit", "Quit"), Binding("r", "reload", "Reload")]

    def __init__(self, model_spec: str = DEFAULT_ALIAS, options: LoadOptions | None = None) -> None:
        super().__init__()
        self.model_spec = model_spec
        self.options = options or LoadOptions()
        self.model: LanguageModel | None = None
        self._cancel = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Loading {self.model_spec}…", id="status")
        yield ProgressBar(id="progress", show_eta=False)
        yield DataTable(id="facts", show_header=False, cursor_type="none")
        yield Static("", id="notes")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#facts", DataTable)
        table.add_columns("fact", "value")
        self.load()

    def action_reload(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load(self) -> None:
        self._cancel.clear()
        job = load_model(self.model_spec, self.options, self._cancel)
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                self.post_message(ModelLoaded(stop.value))
                return
            self.post_message(LoadProgress(event))

    def on_load_progress(self, message: LoadProgress) -> None:
        event = message.event
        self.query_one("#status", Static).update(f"{event.stage}: {event.message}")
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=event.total, progress=event.done)

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.model = message.model
        facts = message.model.facts().to_dict()
        self.query_one("#status", Static).update(f"Loaded {facts['name']} in {facts['load_seconds']:.1f} s")
        self.query_one("#progress", ProgressBar).display = False
        table = self.query_one("#facts", DataTable)
        table.clear()
        sparsity = "-" if facts["weight_sparsity"] is None else f"{facts['weight_sparsity']:.4f}"
        for key, value in (
            ("backend", facts["backend"]),
            ("architecture", f"{facts['architecture']} ({facts['model_type']})"),
            ("parameters", f"{facts['parameters']:,}"),
            ("dtype", facts["dtype"]),
            ("size on disk", f"{facts['size_on_disk_mb']:.1f} MB"),
            ("weight sparsity", sparsity),
            ("path", facts["path"]),
        ):
            table.add_row(key, value)
        self.query_one("#notes", Static).update("\n".join(f"note: {n}" for n in facts["notes"]))

    @on(Worker.StateChanged)
    def worker_failed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and not isinstance(event.worker.error, Cancelled):
            error = event.worker.error
            self.query_one("#status", Static).update(f"Failed: {error}")
            self.notify(str(error), title="Error", severity="error", timeout=10)

    def on_unmount(self) -> None:
        self._cancel.set()


def create_app(model_spec: str = DEFAULT_ALIAS, options: LoadOptions | None = None) -> EdgeAuditApp:
    return EdgeAuditApp(model_spec, options)


def run_app(model_spec: str = DEFAULT_ALIAS, options: LoadOptions | None = None) -> int:
    create_app(model_spec, options).run()
    return 0
