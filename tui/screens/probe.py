"""Probe: run a bias suite (and perplexity, and a latency profile) on the baseline and variants,
with per-category figures updating live as items are scored."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from audit.errors import UserError
from audit.plans import GENERATE_SETTINGS, INT64, MAX_TEMPERATURE, ProbeSpec, sequential_refusal
from audit.probes.items import QA
from audit.probes.suites import SUITES
from audit.progress import Step, StepPlace, clock, step_place
from audit.runner import BASELINE, COMPRESS, NOISE_PREFIX, PROBE_PREFIX
from audit.sequential import judges_anything, suite_gate
from tui.messages import JobEnded, JobProgress
from tui.screens.base import FormError, FormScreen, typed_path
from tui.session import with_suite
from tui.widgets.checkbox import MarkedCheckbox
from tui.widgets.probe_metrics import ProbeMetricsTable

EVERY = "__every__"


# The settings of sequential probing in a plan's [probes], besides `sequential` itself.
SEQUENTIAL_SETTINGS = ("order_seed", "sequential_batch", "futility")


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise FormError(f"{what} must be whole numbers separated by commas, not {text!r}") from None
    if not values:
        raise FormError(f"{what}: give at least one")
    if far := next((v for v in values if v not in INT64), None):
        raise FormError(f"{what}: {far} is beyond the 64-bit whole numbers a plan holds")
    if len(set(values)) < len(values):
        # A seed given twice repeats the same answers, which would count twice.
        raise FormError(f"{what}: {next(v for v in values if values.count(v) > 1)} is given twice")
    return values


def step_words(kind: str) -> str:
    """A step's kind as the operator says it: "builtin probe", "bbq noise floor", "profile"."""
    for prefix, words in ((PROBE_PREFIX, "probe"), (NOISE_PREFIX, "noise floor")):
        if kind.startswith(prefix):
            return f"{kind[len(prefix):].split(':')[0]} {words}"
    return {COMPRESS: "compression"}.get(kind, kind)


def steps_listed(steps: list[Step]) -> str:
    """Steps grouped by model, in order: "baseline (perplexity, builtin probe), wanda-50 (profile)"."""
    by_target: dict[str, list[str]] = {}
    for step in steps:
        by_target.setdefault(step.target, []).append(step_words(step.kind))
    return ", ".join(f"{target} ({', '.join(kinds)})" for target, kinds in by_target.items())


def cancel_summary(place: StepPlace | None, scored_shown: bool = False) -> str:
    """What a cancelled job left in the store, from the steps it reported finished; with
    `scored_shown`, the live figures of the probe it was running are on the screen."""
    if place is None:
        return "no step had finished, so nothing new is stored."
    stored, missing = place.finished_steps, place.unfinished_steps
    said = f"stored: {steps_listed(stored)}." if stored else "no step had finished, so nothing new is stored."
    if missing:
        said += f" Not stored: {steps_listed(missing)}."
    running = place.step
    if scored_shown and not place.finished_now and running.kind.startswith((PROBE_PREFIX, NOISE_PREFIX)):
        said += f" The items {running.target}'s probe scored before the cancel are shown; a stored probe is always complete, so they are not."
    return said


class ProbeScreen(FormScreen):
    MODE = "probe"
    BINDINGS = [Binding("ctrl+r", "run", "Run")]

    _session_id: int | None = None
    _live_target: str | None = None
    _live_started: float = 0.0
    _job_id: int | None = None  # the job this screen started last
    _place: StepPlace | None = None  # where that job last said it stood among its steps
    _scored_step: Step | None = None  # the probe step whose live figures the table shows
    _shown_target: str | None = None
    # The figures a probe scored before it was cancelled or failed are on screen: they stay until
    # the next probe, another model chosen or a new session, whatever jobs run meanwhile.
    _stopped: bool = False
    _sequential_settings: dict[str, Any] = {}  # the session plan's order_seed, sequential_batch, futility

    def compose_body(self) -> ComposeResult:
        yield Label("Probe for bias [dim](ctrl+r runs; 'every model' runs what is not stored yet)[/]", classes="section")
        with Grid(id="probe-form", classes="form"):
            yield Label("Model")
            yield Select([("every model", EVERY)], value=EVERY, allow_blank=False, id="target", compact=True)
            yield Label("Suite")
            yield Select([(name, name) for name in SUITES.names()], value="builtin", allow_blank=False, id="suite", compact=True)
            yield Label("Mode")
            yield Select([("loglik", "loglik"), ("generate", "generate")], value="loglik", allow_blank=False, id="mode", compact=True)
            yield Label("Data file")
            yield Input("", placeholder="bbq, crows, stereoset: path", id="suite-path", compact=True)
            yield Label("Limit")
            yield Input("", placeholder="items per category (all)", id="limit", compact=True, type="integer")
            yield Label("Categories")
            yield Input("", placeholder="all (or a,b,…)", id="categories", compact=True)
            yield Label("Seeds")
            yield Input("0", id="seeds", compact=True)
            yield Label("Temperature")
            yield Input("0.0", id="temperature", compact=True, type="number")
            yield Label("Also measure")
            with Horizontal(classes="checks"):
                yield MarkedCheckbox("perplexity", True, id="perplexity", compact=True)
                yield MarkedCheckbox("profile (latency, memory)", True, id="profile", compact=True)
            yield Label("Stop early")
            with Horizontal(classes="checks"):
                # Sequential probing (audit.sequential): a variant scores its items in a fixed
                # random order and stops once the gate's verdicts on them are settled.
                yield MarkedCheckbox("once the gate's verdicts settle (sequential)", False, id="sequential", compact=True)
        with Horizontal(classes="actions"):
            yield Button("Run (ctrl+r)", id="run", variant="primary", compact=True)
        yield Static("Nothing probed yet in this session.", id="probe-status")
        yield ProbeMetricsTable(id="probe-metrics")

    def on_mount(self) -> None:
        self.watch(self.app, "session_rev", self._show_session)
        self.watch(self.app, "report", self._show_stored)

    # -- the form ----------------------------------------------------------------------------
    def _value(self, widget_id: str) -> str:
        value = self.query_one(f"#{widget_id}").value  # type: ignore[attr-defined]
        return str(value).strip() if value is not None else ""

    def _show_session(self, _rev: int = 0) -> None:
        session = self.app.session
        target = self.query_one("#target", Select)
        if session is None:
            return
        # A variant's name as written, never read as markup.
        options = [("every model (steps not stored yet)", EVERY)] + [(Text(name), name) for name in session.targets()]
        chosen = target.value
        if [(str(label), value) for label, value in options] != getattr(self, "_target_options", None):
            self._target_options = [(str(label), value) for label, value in options]
            # Not the operator's choice: a new variant listed is no reason to leave the figures shown.
            with self.prevent(Select.Changed):
                target.set_options(options)
                target.value = chosen if chosen in {v for _, v in options} else EVERY
        self._shown_target = str(target.value)
        if id(session) != self._session_id:
            # A new session: the form starts from its plan.
            self._session_id = id(session)
            self._stopped = False
            probes = session.plan.probes
            self.query_one("#mode", Select).value = probes.mode
            self.query_one("#limit", Input).value = "" if probes.limit is None else str(probes.limit)
            self.query_one("#categories", Input).value = ",".join(probes.categories)
            self.query_one("#seeds", Input).value = ",".join(str(s) for s in probes.seeds)
            self.query_one("#temperature", Input).value = f"{probes.temperature:g}"
            self.query_one("#perplexity", Checkbox).value = session.plan.perplexity.enabled
            self.query_one("#profile", Checkbox).value = session.plan.profile.enabled
            self.query_one("#sequential", Checkbox).value = probes.sequential
            # The plan's settings of sequential probing, put back when the box is ticked again.
            self._sequential_settings = {key: getattr(probes, key) for key in SEQUENTIAL_SETTINGS}

    def _settings(self) -> tuple[list[str], str, Any, bool, bool, bool]:
        session = self.app.session
        assert session is not None
        target = self._value("target")
        name = self._value("suite")
        suite = name
        if SUITES.meta(name).get("needs_path"):
            path = self._value("suite-path")
            if not path:
                raise FormError(f"the {name} suite reads a data file: give its path in 'Data file'")
            suite = f"{name}:{typed_path(path, 'Data file', 'suite-path', absolute=True)}"
        limit_text = self._value("limit")
        try:
            limit = int(limit_text) if limit_text else None
        except ValueError:
            raise FormError(f"Limit must be a whole number of items per category, not {limit_text!r}", field="limit") from None
        if limit is not None and limit < 1:
            raise FormError(f"Limit must be at least 1 item per category, not {limit}", field="limit")
        if limit is not None and limit not in INT64:
            raise FormError(f"Limit {limit} is beyond the 64-bit whole numbers a plan holds: leave it empty for every item", field="limit")
        temperature_text = self._value("temperature")
        try:
            temperature = float(temperature_text or 0)
        except ValueError:
            raise FormError(f"Temperature must be a number, not {temperature_text!r}", field="temperature") from None
        if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
            raise FormError(f"Temperature must be from 0 (greedy) to {MAX_TEMPERATURE:g}, not {temperature_text}", field="temperature")
        categories = tuple(c.strip() for c in self._value("categories").split(",") if c.strip())
        if categories and not SUITES.meta(name).get("needs_path"):
            # The built-in suite is read at once: a category it does not have is named here, before
            # any job, not after the baseline's perplexity.
            from audit.probes import load_suite

            try:
                load_suite(suite, categories=list(categories), limit=1)
            except UserError as error:
                raise FormError(str(error), field="categories") from None
        mode = self._value("mode")
        seeds = parse_int_list(self._value("seeds"), "seeds")
        if mode == "generate":
            probes = replace(session.plan.probes, seeds=seeds, temperature=temperature)
        else:
            # The study's prompt and parser and the sampling settings are generate-mode ones:
            # log-likelihood scoring asks, parses and samples nothing, and a plan refuses them.
            unused = {key: getattr(ProbeSpec, key) for key in GENERATE_SETTINGS}
            probes = replace(session.plan.probes, prompt="default", parser="strict", **unused)
        probes = replace(probes, mode=mode, limit=limit, categories=categories)
        if self.query_one("#sequential", Checkbox).value:
            if not probes.sequential:
                probes = replace(probes, sequential=True, **self._sequential_settings)
            refusal = sequential_refusal(with_suite(probes, suite), session.plan.gate)
            if refusal:
                raise FormError(f"stop early: the session's plan {refusal}")
        else:  # its settings go with it (a plan refuses them without it)
            probes = replace(probes, sequential=False, **dict.fromkeys(SEQUENTIAL_SETTINGS))
        targets = session.targets() if target == EVERY else [target]
        perplexity = self.query_one("#perplexity", Checkbox).value
        profile = self.query_one("#profile", Checkbox).value
        return targets, suite, probes, perplexity, profile, target == EVERY

    # -- running -----------------------------------------------------------------------------
    @on(Button.Pressed, "#run")
    def action_run(self) -> None:
        form = self.read_form(self._settings)
        if form is None:
            return
        session, (targets, suite, probes, perplexity, profile, pending) = form
        if probes.sequential and not judges_anything(suite_gate(session.plan.gate, suite, with_suite(probes, suite).suites[0]),
                                                     SUITES.meta(suite.partition(":")[0])["kind"] == QA):
            self.notify(f"stop early: the gate has no verdict on {suite.partition(':')[0]} to wait for, so its items are all scored",
                        title=self.MODE, severity="warning")
        title = "probe every model" if pending else f"probe {targets[0]}"

        def make(cancel):
            return session.measure(targets, suite, probes, perplexity, profile, cancel, pending_only=pending)

        if self.app.start_job("measure", title, make, owner=self):
            self._job_id = self.app.job.job_id
            self._live_target = targets[0]
            self._live_started = time.monotonic()
            self._place = self._scored_step = None
            self._stopped = False
            self.query_one("#probe-status", Static).update("starting…")
        if self.app.job is not None:
            # Off the Run button, so that a second enter does not ask for the same job again; on
            # the live figures, which the arrow keys then scroll.
            self.query_one("#probe-metrics", ProbeMetricsTable).focus()

    @on(JobProgress)
    def _progress(self, message: JobProgress) -> None:
        if message.kind != "measure":
            return
        event = message.event
        status = self.query_one("#probe-status", Static)
        place = step_place(event)
        if place is not None:
            self._place = place
        if place is not None and place.finished_now:
            status.update(Text(f"stored: {place.step.target} {step_words(place.step.kind)}"))
            return
        if event.stage == "target":
            self._live_target = event.message
            self._live_started = time.monotonic()
            return
        if event.stage == "probe" and "categories" in event.data:
            self.query_one("#probe-metrics", ProbeMetricsTable).show(event.data)
            self._scored_step = None if place is None else place.step
            rate = event.data.get("items_per_s") or 0.0
            left = (event.total or 0) - event.done
            open_verdicts = event.data.get("open_verdicts")
            # A probe that stops early (sequential) ends by the last item at the latest.
            eta = f" · {'at most ' if open_verdicts is not None else 'eta '}{clock(left / rate)}" if rate > 0 and left > 0 else ""
            still = "" if open_verdicts is None else f" · {open_verdicts} {'verdict' if open_verdicts == 1 else 'verdicts'} open"
            status.update(
                Text.assemble(("live", "bold"), f" {self._live_target}: {event.done:.0f}/{event.total:.0f} items · {rate:.1f} items/s{eta}{still}")
            )
        else:
            status.update(Text(f"{self._live_target}: {event.stage}: {event.message}"))

    @on(JobEnded)
    def _ended(self, message: JobEnded) -> None:
        if message.kind != "measure":
            return
        self._stopped = message.outcome != "done"
        status = self.query_one("#probe-status", Static)
        if message.outcome == "cancelled":
            place = self._place
            scored_shown = place is not None and self._scored_step == place.step
            status.update(Text.assemble(("cancelled", "yellow"), ": ", cancel_summary(place, scored_shown)))
        elif message.outcome == "failed":
            status.update(Text.assemble(("failed", "red"), ": ", message.reason))
        else:
            status.update("[green]done[/]: stored; see screen 4 for the comparison")

    @on(Select.Changed, "#target")
    def _target_changed(self, event: Select.Changed) -> None:
        if str(event.value) == self._shown_target or self.app.job is not None:
            return  # set by the screen itself, or a job's live figures are showing
        self._shown_target = str(event.value)
        self._live_target = None
        self._job_id = None
        self._stopped = False
        self._show_stored(self.app.report)

    def _show_stored(self, report: dict[str, Any] | None) -> None:
        """Between jobs, the stored figures of the model last probed (or of the one chosen).
        After a cancelled or failed probe the figures scored before it stopped stay."""
        outcome = self.app.last_outcome
        if self._stopped or (outcome is not None and outcome[0] == self._job_id and outcome[2] != "done"):
            return
        if self.app.job is not None or report is None:
            return
        chosen = self._live_target or self._value("target")
        name = BASELINE if chosen == EVERY else chosen
        suite = self._value("suite")
        variant = next((v for v in report.get("variants", []) if v["name"] == name), None)
        probes = (variant or {}).get("probes") or {}
        probe = probes.get(suite) or next(iter(probes.values()), None)
        table = self.query_one("#probe-metrics", ProbeMetricsTable)
        status = self.query_one("#probe-status", Static)
        if probe is None:
            table.show(None)
            status.update(Text(f"{name}: no probe stored yet"))
            return
        table.show(probe)
        status.update(Text(f"stored: {name} · {probe.get('n_items')} items · {probe.get('items_per_s') or 0:.1f} items/s"))
