"""Compress: a pruning recipe, a quantization scheme, or both, run on the loaded model into a new
named variant of the session, with live per-block progress."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.widgets import Button, DataTable, Input, Label, Select, Static

from audit.compress.recipe import (
    MIN_SEQLEN,
    PRUNING_METHOD_NAMES,
    QUANTIZATION_SCHEME_NAMES,
    Pattern,
    PruneRecipe,
    QuantizeRecipe,
)
from audit.errors import UserError
from audit.plans import INT64, CalibrationSpec, VariantSpec, variant_name
from audit.reports.render import fmt
from tui.messages import JobEnded, JobFinished, JobProgress
from tui.screens.base import FormError, FormScreen, waiting_for_model
from tui.widgets.cells import cell_strip
from tui.widgets.fitted_table import add_sized, labelled, method_cell

NONE = "none"
PATTERNS = ("unstructured", "2:4", "4:8")
BLOCK_MESSAGE = re.compile(r"block (\d+)/(\d+)")


def block_strip(done: int, total: int, width: int) -> Text:
    """One cell per decoder block: pruned, being pruned, still to do."""
    strip = cell_strip(done, total, width)
    strip.append(f" {done}/{total} blocks")
    return strip


class CompressScreen(FormScreen):
    MODE = "compress"
    BINDINGS = [Binding("ctrl+r", "run", "Run")]

    def compose_body(self) -> ComposeResult:
        yield Label("New variant of the loaded model [dim](tab moves, enter opens a list, ctrl+r runs)[/]", classes="section")
        methods = [(name, name) for name in PRUNING_METHOD_NAMES.names()] + [("none (quantize only)", NONE)]
        schemes = [("none", NONE)] + [(name, name) for name in QUANTIZATION_SCHEME_NAMES.names()]
        with Grid(id="compress-form", classes="form"):
            yield Label("Prune with")
            yield Select(methods, value="wanda", allow_blank=False, id="method", compact=True)
            yield Label("Quantize")
            yield Select(schemes, value=NONE, allow_blank=False, id="scheme", compact=True)
            yield Label("Sparsity")
            yield Input("0.5", id="sparsity", compact=True)
            yield Label("Pattern")
            yield Select([(p, p) for p in PATTERNS], value="unstructured", allow_blank=False, id="pattern", compact=True)
            yield Label("Calib. samples")
            yield Input("32", id="nsamples", compact=True, type="integer")
            yield Label("Seq. length")
            yield Input("512", id="seqlen", compact=True, type="integer")
            yield Label("Exclude")
            yield Input("", placeholder="glob patterns, comma-separated", id="exclude", compact=True)
            yield Label("Name")
            yield Input("wanda-50", id="name", compact=True)
        yield Static("", id="recipe-help")
        with Horizontal(classes="actions"):
            yield Button("Run (ctrl+r)", id="run", variant="primary", compact=True)
        yield Static("", id="blocks")
        yield Static("", id="compress-status")
        yield DataTable(id="compress-results", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self._auto_name = "wanda-50"
        self._waiting_shown = False
        self._running_name = ""
        self.watch(self.app, "session_rev", self._show_session)
        self.watch(self.app, "loading", self._show_model_state)
        self.watch(self.app, "report", self._show_results)
        self._explain()

    # -- the form ----------------------------------------------------------------------------
    def _value(self, widget_id: str) -> str:
        widget = self.query_one(f"#{widget_id}")
        value = widget.value  # type: ignore[attr-defined]
        return str(value).strip() if value is not None else ""

    def _parts(self) -> tuple[PruneRecipe | None, QuantizeRecipe | None]:
        method, scheme, pattern = self._value("method"), self._value("scheme"), self._value("pattern")
        if method == NONE and scheme == NONE:
            raise FormError("choose a pruning method, a quantization scheme, or both")
        prune = None
        if method != NONE:
            sparsity = None  # an N:M pattern says how many weights go
            if pattern == "unstructured":
                try:
                    sparsity = float(self._value("sparsity"))
                except ValueError:
                    raise FormError(f"sparsity must be a number such as 0.5, not {self._value('sparsity')!r}", field="sparsity") from None
            exclude = tuple(p.strip() for p in self._value("exclude").split(",") if p.strip())
            try:
                prune = PruneRecipe(method, sparsity, pattern, exclude=exclude)
            except UserError as error:
                raise FormError(str(error), field="sparsity" if "sparsity" in str(error) else None) from None
        return prune, (QuantizeRecipe(scheme) if scheme != NONE else None)

    def _whole(self, field: str, label: str, least: int) -> int:
        """A whole-number field, checked here with its name, before any job changes the plan."""
        text = self._value(field)
        try:
            value = int(text)
        except ValueError:
            raise FormError(f"{label} must be a whole number, not {text!r}", field=field) from None
        if value < least:
            raise FormError(f"{label} must be at least {least}, not {value}", field=field)
        if value not in INT64:
            raise FormError(f"{label} {value} is beyond the 64-bit whole numbers a plan holds", field=field)
        return value

    def _recipe(self) -> tuple[VariantSpec, CalibrationSpec, str]:
        """The variant to add (named as asked, or as `variant_to_add` renames it), the
        calibration, and the name asked for."""
        session = self.app.session
        assert session is not None
        prune, quantize = self._parts()
        name = self._value("name") or variant_name(prune, quantize)
        nsamples = self._whole("nsamples", "Calib. samples", 1)
        seqlen = self._whole("seqlen", "Seq. length", MIN_SEQLEN)
        # The facts read when the model was loaded: reading them again counts the zero weights
        # of the whole model, on the interface's thread.
        context = session.facts.context_length if session.facts is not None else None
        if context and seqlen > context:
            raise FormError(f"Seq. length {seqlen} exceeds the model's context length {context}", field="seqlen")
        try:
            spec = session.variant_to_add(VariantSpec(name, prune, quantize))
        except UserError as error:
            raise FormError(str(error), field="name") from None
        return spec, replace(session.plan.calibration, nsamples=nsamples, seqlen=seqlen), name

    @on(Select.Changed)
    @on(Input.Changed, "#sparsity")
    def _recipe_changed(self) -> None:
        """The name follows the recipe until the operator types one of their own."""
        try:
            auto = variant_name(*self._parts())
        except FormError:
            auto = self._auto_name
        name = self.query_one("#name", Input)
        if name.value in ("", self._auto_name):
            name.value = auto
        self._auto_name = auto
        self.query_one("#sparsity", Input).disabled = self._value("pattern") != "unstructured"
        self._explain()

    def _explain(self) -> None:
        method, scheme = self._value("method"), self._value("scheme")
        lines = []
        if method != NONE:
            meta = PRUNING_METHOD_NAMES.meta(method)
            calib = " (uses the calibration samples)" if meta.get("needs") else ""
            lines.append(f"[b]{method}[/]: {meta.get('description', '')}{calib}")
            pattern = Pattern.parse(self._value("pattern"))
            if pattern.structured:
                lines.append(
                    f"[b]{pattern}[/]: {pattern.kept} of every {pattern.group} consecutive weights of a row kept, "
                    f"so sparsity {pattern.sparsity:g}"
                )
        if scheme != NONE:
            lines.append(f"[b]{scheme}[/]: {QUANTIZATION_SCHEME_NAMES.meta(scheme).get('description', '')}")
        self.query_one("#recipe-help", Static).update("\n".join(lines))

    def _show_model_state(self, _loading: str | None = None) -> None:
        """Until a model is loaded, the status line says so (and that it is loading)."""
        note = waiting_for_model(self.app)
        status = self.query_one("#compress-status", Static)
        if note is not None:
            status.update(note)
        elif self._waiting_shown:
            status.update("")
        self._waiting_shown = note is not None

    def _show_session(self, _rev: int = 0) -> None:
        self._show_model_state()
        session = self.app.session
        if session is None:
            return
        self.query_one("#nsamples", Input).value = str(session.plan.calibration.nsamples)
        self.query_one("#seqlen", Input).value = str(session.plan.calibration.seqlen)

    # -- running -----------------------------------------------------------------------------
    @on(Button.Pressed, "#run")
    def action_run(self) -> None:
        form = self.read_form(self._recipe)
        if form is None:
            return
        session, (spec, calibration, asked) = form
        if self.app.start_job("compress", f"compress {spec.name}", lambda cancel: session.compress(spec, calibration, cancel), owner=self):
            if spec.name != asked:
                self.notify(f"{asked} is taken by another recipe: this variant is named {spec.name}", title=self.MODE)
            self._running_name = spec.name
            self.query_one("#blocks", Static).update("")
            self.query_one("#compress-status", Static).update(Text(f"starting {spec.name}…"))
            self.job_started("compress-results")

    @on(JobProgress)
    def _progress(self, message: JobProgress) -> None:
        if message.kind != "compress":
            return
        event = message.event
        match = BLOCK_MESSAGE.search(event.message)
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            if "calibrating" in event.message:
                done -= 1
            width = self.query_one("#blocks", Static).size.width - 14
            self.query_one("#blocks", Static).update(block_strip(done, total, width))
        self.query_one("#compress-status", Static).update(Text(event.message))

    @on(JobFinished)
    def _finished(self, message: JobFinished) -> None:
        if message.kind == "compress":
            self.query_one("#compress-status", Static).update(Text.assemble((f"{message.result} is ready", "green"), ": probe it on screen 3"))

    @on(JobEnded)
    def _ended(self, message: JobEnded) -> None:
        if message.kind != "compress":
            return
        status = self.query_one("#compress-status", Static)
        if message.outcome == "cancelled":
            status.update(Text.assemble(("cancelled", "yellow"), f": nothing of {self._running_name} is stored; ctrl+r compresses it again"))
        elif message.outcome == "failed":
            status.update(Text.assemble(("failed", "red"), ": ", message.reason))

    def _show_results(self, report: dict[str, Any] | None) -> None:
        table = self.query_one("#compress-results", DataTable)
        table.clear(columns=True)
        rows = []
        for variant in (report or {}).get("variants", []):
            step = variant["steps"].get("compress")
            if step is None:
                continue
            figures = (fmt(variant.get("actual_sparsity"), 3), fmt(variant.get("size_on_disk_mb"), 4),
                       fmt(variant.get("size_on_disk_compressed_mb"), 4), fmt(step.get("seconds"), 3),
                       fmt((step.get("resources") or {}).get("rss_peak_mb"), 4))
            rows.append((None, [Text(variant["name"], style="bold"), method_cell(variant.get("method") or "-"), *(Text(f) for f in figures)]))
        labels = ("variant", "method", "sparsity", "dense MB", "compressed MB", "seconds", "peak RSS MB")
        add_sized(table, labelled(labels), rows)
