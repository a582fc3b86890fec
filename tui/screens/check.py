"""Check: prove the model folder deployed on this device is the one an audit record describes,
and say in one plain sentence whether it may ship."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Label, Static

from audit.fieldcheck import STEPS, check_deployment
from tui.messages import JobEnded, JobFinished, JobProgress
from tui.screens.base import FormError, ModeScreen, typed_path
from tui.widgets.cells import cell_strip


# The fields a check cannot start without, and what to say when one is empty.
REQUIRED = (
    ("check-model", "give the deployed model folder"),
    ("check-record", "give the audit record file (REC.json) from the lab"),
)

# Each path field's label, as the form shows it.
LABELS = {"check-model": "Model folder", "check-record": "Audit record", "check-trust": "Trusted key"}

# Icon, word and style of a step's status: the icon and the word say it without the colour.
STATUS = {
    "pass": ("✔", "pass", "green"),
    "fail": ("✖", "FAIL", "bold red"),
    "warn": ("!", "warn", "yellow"),
    "skip": ("–", "skip", "dim"),
}

# Why a check that did not clear the folder blocks it, after "✖ DO NOT SHIP".
BLOCKED_BECAUSE = {
    "audit-failed": "the lab's audit did not pass this variant",
    "mismatch": "this is not the audited model",
    "signature": "the audit record cannot be trusted",
    "device": "this device is outside the audited envelope",
}

INTRO = (
    "Is the model deployed here the one the lab audited, and may it ship?\n\n"
    "Give its folder and the audit record (REC.json) from the lab, and the lab's public key to "
    "trust the record's signature. The check compares the folder's weights, config and tokenizer "
    "with the record, replays the record's check items and perplexity text, and times the model "
    "on this device. It changes nothing in the folder; every check is kept in the results store "
    "(History, 5)."
)


@dataclass
class CheckRead(Message):
    """A stored field check (its `CheckResult.to_dict`), read to be shown on the Check screen."""

    result: dict[str, Any]


def stored_check(store_path: Path, check_id: int) -> dict[str, Any]:
    """A stored check's full result, as the Check screen shows a check it has just run."""
    from audit.store import ResultsStore

    with ResultsStore(store_path, readonly=True) as store:
        row = store.check(check_id)
    # The result is stored before the store gives it its id.
    return {**row["result"], "check_id": row["id"]}


def as_dict(result: Any) -> dict[str, Any]:
    """A `CheckResult` or its dict, as a dict: the screen shows stored checks the same way."""
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def status_text(status: str) -> Text:
    icon, word, style = STATUS.get(status, ("?", status, ""))
    return Text(f"{icon} {word}", style=style)


def step_strip(result: dict[str, Any]) -> Text:
    """Each step's icon and name on one line: which one stopped the check, at a glance."""
    line = Text()
    for step in result.get("steps") or []:
        icon, _, style = STATUS.get(step["status"], ("?", step["status"], ""))
        if line:
            line.append("  ")
        line.append(f"{icon} {step['name']}", style=style)
    return line


def verdict_text(result: dict[str, Any]) -> Text:
    """The banner: the decision in words, the core's sentence (wrapped, never cut), the steps."""
    cleared = result.get("exit_code") == 0
    headline = Text.assemble((" ✔ CLEARED TO SHIP " if cleared else " ✖ DO NOT SHIP ", "bold reverse"))
    if not cleared and result.get("outcome") in BLOCKED_BECAUSE:
        headline.append(f"  {BLOCKED_BECAUSE[result['outcome']]}", style="bold")
    check = f"check {result['check_id']} · " if result.get("check_id") is not None else ""
    caption = Text(f"{check}took {float(result.get('seconds') or 0):.1f} s · d shows what each step found", style="dim")
    return Text("\n").join([headline, Text(str(result.get("sentence", "")), style="bold"), step_strip(result), caption])


def progress_text(step: int, message: str, detail: str) -> Text:
    """"■■▣□□ step 3 of 5: replaying the check items · 12/20 items"."""
    total = len(STEPS)
    line = cell_strip(step, total)
    line.append(f" step {step + 1} of {total}: {message}")
    if detail and detail != message:
        line.append(f" · {detail}", style="dim")
    return line


def details_renderable(result: dict[str, Any]) -> RenderableType:
    """What each step found; the lab's findings when its gate did not pass the variant; and
    what was checked against what."""
    table = Table(box=None, expand=True, padding=(0, 1), header_style="bold")
    table.add_column("step", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("what was found", ratio=1, overflow="fold")
    for step in result.get("steps") or []:
        table.add_row(step["name"], status_text(step["status"]), Text(str(step["summary"])))
    # The decision and its sentence above the steps: the details take the banner's place.
    cleared = result.get("exit_code") == 0
    check = f" of check {result['check_id']}" if result.get("check_id") is not None else ""
    heading = Text.assemble(
        (" ✔ CLEARED TO SHIP " if cleared else " ✖ DO NOT SHIP ", "bold reverse green" if cleared else "bold reverse red"),
        (f"  what each step{check} found", "bold"),
    )
    parts: list[RenderableType] = [heading, Text(str(result.get("sentence", "")), style="bold"), table]
    audit = result.get("audit") or {}
    if not audit.get("gate_passed"):
        said = audit.get("gate_plain") or audit.get("gate_verdict") or "no verdict"
        parts.append(Text(""))
        parts.append(Text.assemble(("The lab's gate on ", "bold"), (str(audit.get("title")), "bold"), (f": {said}", "bold red")))
        # Text, not markup: a finding's "[Age]" would read as a style tag.
        parts += [Text(f"  • {failure}", style="red") for failure in audit.get("failures") or []]
    signer = audit.get("signer")
    parts.append(Text(""))
    parts.append(
        Text.assemble(
            ("folder ", "dim"), str(result.get("model_path")), "\n",
            ("record ", "dim"), str(result.get("record_path")),
            (f" · {audit.get('title')} · ", "dim"),
            f"signed by key {signer}" if signer else "unsigned",
        )
    )
    return Group(*parts)


class CheckScreen(ModeScreen):
    MODE = "check"
    # The model folder is filled in from the loaded model: the record is what is left to type.
    AUTO_FOCUS = "#check-record"
    BINDINGS = [
        Binding("ctrl+r", "run", "Check"),
        Binding("d", "details", "Steps"),
    ]

    _job_id: int | None = None
    _step: int = 0
    _step_message: str = ""
    _auto_model: str = ""  # the loaded model's folder, while the field still shows it
    _ran: dict[str, Any] | None = None  # the result of the check this form ran last
    details_shown: bool = False

    def compose_body(self) -> ComposeResult:
        yield Label("Field check: is this the audited model, may it ship? [dim](ctrl+r checks)[/]", classes="section")
        with Grid(id="check-form", classes="form"):
            yield Label("Model folder")
            yield Input("", placeholder="the deployed model folder", id="check-model", compact=True)
            yield Label("Audit record")
            yield Input("", placeholder="REC.json from the lab", id="check-record", compact=True)
            yield Label("Trusted key")
            yield Input("", placeholder="the lab's edge-audit.pub (optional)", id="check-trust", compact=True)
        with Horizontal(classes="actions"):
            yield Button("Check (ctrl+r)", id="run", variant="primary", compact=True)
            yield Label("  d: the five steps · esc cancels a check", classes="hint")
        yield Static("", id="check-status")
        with VerticalScroll(id="check-result"):
            yield Static(INTRO, id="verdict", classes="-none")
            yield Static("", id="check-details")

    def on_mount(self) -> None:
        self.query_one("#check-details", Static).display = False
        self.watch(self.app, "session_rev", self._show_session)
        self.watch(self.app, "field_check", self._show)

    # -- the form ----------------------------------------------------------------------------
    @on(Input.Submitted)
    def _next_field(self) -> None:
        self.focus_next()

    def _show_session(self, _rev: int = 0) -> None:
        """The loaded model's folder is the one to check, until the operator types another."""
        session = self.app.session
        folder = session.facts.path if session is not None and session.facts is not None else None
        if not folder:
            return
        field = self.query_one("#check-model", Input)
        if field.value in ("", self._auto_model):
            field.value = str(folder)
        self._auto_model = str(folder)

    def _path(self, widget_id: str) -> Path | None:
        text = self.query_one(f"#{widget_id}", Input).value.strip()
        return typed_path(text, LABELS[widget_id], widget_id) if text else None

    def _field_named_by(self, error: str) -> str | None:
        """The field a refusal is about, to put the cursor back in it."""
        if error.startswith("--model"):
            return "check-model"
        for widget_id in ("check-trust", "check-record", "check-model"):
            text = self.query_one(f"#{widget_id}", Input).value.strip()
            if text and text in error and (widget_id != "check-trust" or "key" in error):
                return widget_id
        return None

    # -- running -----------------------------------------------------------------------------
    @on(Button.Pressed, "#run")
    def action_run(self) -> None:
        # Off the text fields, so that the screen keys (1-6, d, q, ?) work again at once.
        self.query_one("#run", Button).focus()
        try:
            for widget_id, missing in REQUIRED:
                if self._path(widget_id) is None:
                    raise FormError(missing, widget_id)
            model, record, trust = self._path("check-model"), self._path("check-record"), self._path("check-trust")
        except FormError as error:
            self.notify(str(error), title="check", severity="error")
            self.query_one(f"#{error.field}", Input).focus()
            return
        assert model is not None and record is not None
        store, options = self.app.store_path, self.app.options

        def make(cancel):
            # The check imports the inference libraries when it loads the model, in the job's thread.
            return check_deployment(model, record, trust=trust, options=options, store_path=store, cancel=cancel)

        if self.app.start_job("check", f"check {model.name or model}", make, owner=self):
            self._job_id = self.app.job.job_id
            self._step, self._step_message = 0, "starting"
            self.query_one("#check-status", Static).update(progress_text(0, "starting", ""))
            self.query_one("#verdict", Static).add_class("-stale")

    @on(JobProgress)
    def _progress(self, message: JobProgress) -> None:
        if message.kind != "check" or message.job_id != self._job_id:
            return
        event = message.event
        if event.stage == "check":
            self._step, self._step_message = int(event.done), event.message
            detail = ""
        else:
            detail = event.message
        self.query_one("#check-status", Static).update(progress_text(self._step, self._step_message, detail))

    @on(JobFinished)
    def _finished(self, message: JobFinished) -> None:
        if message.kind == "check" and message.job_id == self._job_id:
            self._ran = as_dict(message.result)
            self.app.field_check = self._ran

    @on(JobEnded)
    def _ended(self, message: JobEnded) -> None:
        if message.kind != "check" or message.job_id != self._job_id:
            return
        verdict = self.query_one("#verdict", Static)
        # A verdict below a check that failed or was cancelled is an earlier check's, perhaps of
        # another folder: it stays, dimmed as while the check ran, never read as this one's.
        verdict.set_class(message.outcome != "done", "-stale")
        status = self.query_one("#check-status", Static)
        if message.outcome == "cancelled":
            status.update(Text("cancelled: nothing was stored; what is shown below is from before", style="yellow"))
        elif message.outcome == "failed":
            # The notice says it in full, but goes away; this line stays until the next check,
            # one line long so that the verdict below keeps its place.
            status.update(Text.assemble(("not checked: ", "bold red"), message.error.replace("\n", " ")))
            widget_id = self._field_named_by(message.error)
            if widget_id is not None:
                self.query_one(f"#{widget_id}", Input).focus()
        else:
            # Not "all steps done": a check that finds a mismatch stops there.
            result = self.app.field_check or {}
            stored = f"stored as check {result['check_id']}" if result.get("check_id") is not None else "stored"
            status.update(Text(f"checked in {float(result.get('seconds') or 0):.1f} s · {stored} (History, 5)", style="dim"))

    # -- the verdict -------------------------------------------------------------------------
    def show_result(self, result: Any) -> None:
        """Show a check's verdict (a `CheckResult` or its dict): the app keeps it while other
        screens are shown."""
        self.app.field_check = as_dict(result)

    def _show(self, result: dict[str, Any] | None) -> None:
        verdict = self.query_one("#verdict", Static)
        details = self.query_one("#check-details", Static)
        verdict.remove_class("-stale")
        if result is None:
            verdict.set_classes("-none")
            verdict.update(INTRO)
            details.display = False
            verdict.display = True
            return
        if result is not self._ran:
            # A check opened from History, or shown by a caller: the form says what it was about,
            # so that ctrl+r checks the same folder again. (The key's path is not stored.)
            for widget_id, key in (("check-model", "model_path"), ("check-record", "record_path")):
                field = self.query_one(f"#{widget_id}", Input)
                field.value = str(result.get(key) or "")
                field.cursor_position = len(field.value)
            # Off the text fields, so that d (the steps) works at once.
            self.query_one("#run", Button).focus()
        cleared = result.get("exit_code") == 0
        verdict.set_class(False, "-none")
        verdict.set_class(cleared, "-cleared")
        verdict.set_class(not cleared, "-blocked")
        verdict.update(verdict_text(result))
        details.update(details_renderable(result))
        details.display = self.details_shown
        verdict.display = not self.details_shown
        # A new verdict is read from its banner, whatever was scrolled to before.
        self.query_one("#check-result", VerticalScroll).scroll_home(animate=False)

    def action_details(self) -> None:
        if self.app.field_check is None:
            self.notify("no check yet: fill the form and press ctrl+r", severity="warning")
            return
        self.details_shown = not self.details_shown
        # The details replace the banner (they repeat its decision and sentence), so that they
        # start at the top of the pane at any terminal size, with no scrolling to wait for.
        self.query_one("#check-details", Static).display = self.details_shown
        self.query_one("#verdict", Static).display = not self.details_shown
        self.query_one("#check-result", VerticalScroll).scroll_home(animate=False)
