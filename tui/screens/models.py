"""Models: choose the model to audit (an alias, a folder or file, a cached or recent one), its facts,
and the session's baseline and variants with the steps stored for each."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui.messages import ModelChoicesRead
from tui.screens.base import FormError, ModeScreen, typed_path
from tui.widgets.fitted_table import add_sized, labelled, method_cell

STEP_COLUMNS = (("compress", "compress"), ("perplexity", "perplexity"), ("probe", "probe:"), ("profile", "profile"))

FACT_COLUMNS = labelled(("fact", "value"))


def model_choices(store_path: Any) -> list[tuple[str, str]]:
    """(label, spec) for the built-in aliases, converted models in the cache and models of
    earlier runs in the store, newest first (reads the disk: call it in a worker)."""
    from audit.errors import UserError
    from audit.models.aliases import ALIASES, DEFAULT_ALIAS
    from audit.models.loader import cached_models
    from audit.store import ResultsStore
    from tui.session import nothing_stored

    choices: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in ALIASES:
        default = ", default" if entry.name == DEFAULT_ALIAS else ""
        choices.append((f"{entry.name} (built-in{default})", entry.name))
        seen.add(entry.name)
    for cached in cached_models():
        if cached["alias"] is None and cached["path"] not in seen:
            choices.append((f"cached: {cached['name']}", cached["path"]))
            seen.add(cached["path"])
    if not nothing_stored(store_path):
        try:
            with ResultsStore(store_path, readonly=True) as store:
                runs = store.runs()
        except UserError:
            runs = []  # the built-in and cached models are still there to choose; History says why
        for run in reversed(runs):
            if run.model not in seen:
                choices.append((f"recent: {run.model}", run.model))
                seen.add(run.model)
    return choices


def _home(path: str) -> str:
    """A path under the home folder written with ~, as the operator would type it."""
    from pathlib import Path

    home = str(Path.home())
    return "~" + path[len(home):] if path == home or path.startswith(home + "/") else path


class ModelsScreen(ModeScreen):
    MODE = "models"

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="models-top"):
            with Vertical(id="choices-pane"):
                yield Label("Model [dim](enter loads it)[/]", classes="section")
                # Plain text: a model's path is shown as written, brackets and all.
                yield OptionList(id="choices", markup=False)
                yield Input(placeholder="or a folder, .gguf file or hub id", id="model-path", compact=True)
            with Vertical(id="facts-pane"):
                yield Label("Loaded model", classes="section", id="facts-title")
                yield DataTable(id="facts", show_header=False, cursor_type="none", zebra_stripes=True)
                # The path under the table, where it wraps: a table cell would cut it at 80 columns.
                yield Static("", id="model-where")
                yield Static("", id="notes")
        yield Label("Session: the baseline and its variants, steps stored", classes="section")
        yield DataTable(id="session-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        add_sized(self.query_one("#facts", DataTable), FACT_COLUMNS, [])
        self.watch(self.app, "session_rev", self._show_session)
        self.watch(self.app, "loading", self._show_session, init=False)
        self.watch(self.app, "report", self._show_steps)
        self.watch(self.app, "failed_load", self._offer_again, init=False)
        self.query_one("#choices", OptionList).focus()

    @on(ModelChoicesRead)
    def _choices(self, message: ModelChoicesRead) -> None:
        options = self.query_one("#choices", OptionList)
        session = self.app.session
        loaded = session.model_spec if session is not None else None
        options.clear_options()
        options.add_options([Option(("● " if spec == loaded else "  ") + label, id=spec) for label, spec in message.choices])
        specs = [spec for _, spec in message.choices]
        options.highlighted = specs.index(loaded) if loaded in specs else (0 if specs else None)

    @on(OptionList.OptionSelected, "#choices")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        session = self.app.session
        if session is not None and event.option.id == session.model_spec:
            # Loading it again would start a new session, and Compare would lose this one's.
            self.notify(f"{session.facts.name} is loaded already; to start a new session on it, type {event.option.id} below")
            return
        if event.option.id is not None and self.app.load(event.option.id):
            self._loading_started()

    @on(Input.Submitted, "#model-path")
    def _typed(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.notify("type a model's folder, .gguf file or hub id, then press enter", severity="warning")
            return
        try:
            typed_path(event.value.strip(), "model")
        except FormError as error:
            self.notify(str(error), severity="error")
            return
        if self.app.load(event.value):
            self._loading_started()

    def _loading_started(self) -> None:
        # The cursor goes to the session table: off the path field, so that the screen keys
        # work while the model loads, and off the model list, where enter loads the model
        # highlighted there (the default one at first), not the one just asked for.
        self.query_one("#session-table", DataTable).focus()

    def _offer_again(self, spec: str | None) -> None:
        """After a failed load, what was asked for is back in the path field, selected, so
        that enter retries it as corrected or typing replaces it."""
        if spec is None:
            return
        field = self.query_one("#model-path", Input)
        field.value = spec
        field.focus()
        field.select_all()

    def _show_session(self, _changed: object = None) -> None:
        self.app.read_model_choices(self)
        session = self.app.session
        table = self.query_one("#facts", DataTable)
        table.clear(columns=True)
        notes = self.query_one("#notes", Static)
        where = self.query_one("#model-where", Static)
        loading = self.app.loading
        if session is None or session.facts is None:
            where.update("")
            title = Text.assemble("Loading ", (_home(loading), "bold"), "…") if loading else Text("Loaded model: none yet")
            self.query_one("#facts-title", Label).update(title)
            notes.update("the other screens can be used meanwhile" if loading else "")
            add_sized(table, FACT_COLUMNS, [])
            self._show_steps(self.app.report)
            return
        facts = session.facts.to_dict()
        self.query_one("#facts-title", Label).update(Text.assemble("Loaded model: ", (facts["name"], "bold")))
        sparsity = "-" if facts["weight_sparsity"] is None else f"{facts['weight_sparsity']:.4f}"
        rows = (
            ("parameters", f"{facts['parameters']:,}"),
            ("size on disk", f"{facts['size_on_disk_mb']:.1f} MB"),
            ("dtype", facts["dtype"]),
            ("backend", facts["backend"]),
            ("weight sparsity", sparsity),
            ("architecture", f"{facts['architecture']} ({facts['model_type']})"),
            ("layers", str(facts["layers"] if facts["layers"] is not None else "-")),
            ("loaded in", f"{facts['load_seconds']:.1f} s"),
        )
        add_sized(table, FACT_COLUMNS, [(None, [Text(key, style="bold"), Text(value)]) for key, value in rows])
        where.update(Text.assemble(("path ", "bold"), _home(facts["path"])))
        lines = [f"loading {_home(loading)}… ({facts['name']} stays loaded until it is ready)"] if loading else []
        notes.update(Text("\n".join(lines + [f"note: {n}" for n in facts["notes"]])))
        self._show_steps(self.app.report)

    def _show_steps(self, report: dict[str, Any] | None) -> None:
        table = self.query_one("#session-table", DataTable)
        table.clear(columns=True)
        labels = ("model", "method", "sparsity", *(label for label, _ in STEP_COLUMNS))
        session = self.app.session
        rows = [] if session is None else self._step_rows(session, report)
        add_sized(table, labelled(labels), rows)

    def _step_rows(self, session: Any, report: dict[str, Any] | None) -> list[tuple[str, list[Text]]]:
        rows = []
        stored = {v["name"]: v for v in (report or {}).get("variants", [])}
        plan_variants = {v.name: v for v in session.plan.variants}
        for name in session.targets():
            variant = stored.get(name)
            steps = (variant or {}).get("steps", {})
            spec = plan_variants.get(name)
            if spec is None:
                method, reached = session.baseline_method
                sparsity = "-" if reached is None else f"{reached:.2g}"
            elif spec.path and (variant or {}).get("sparsity_measured"):
                # A folder: its method and sparsity as measured when it was loaded.
                method, sparsity = variant["method"], f"{variant['sparsity']:.2g}"
            else:
                method = spec.method
                sparsity = "-" if spec.sparsity is None else f"{spec.sparsity:g}"
            cells = [Text(name, style="bold"), method_cell(method), Text(sparsity)]
            for label, prefix in STEP_COLUMNS:
                if label == "compress" and spec is None:
                    cells.append(Text("n/a", style="dim"))
                    continue
                done = [s for kind, s in steps.items() if kind == prefix or (prefix.endswith(":") and kind.startswith(prefix))]
                if done:
                    seconds = sum(s.get("seconds") or 0 for s in done)
                    cells.append(Text(f"✓ {seconds:.1f} s" if seconds < 10 else f"✓ {seconds:.0f} s", style="green"))
                else:
                    cells.append(Text("–", style="dim"))
            rows.append((name, cells))
        return rows
