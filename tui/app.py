"""The edge-audit Textual app: load a model, compress it, probe it and compare, on the device.

The app's session is a run in the results store: what the operator does is recorded as that
run's steps through the same core calls as `edge-audit run`, and the comparison is the stored
run read back (`RunView`), as reports and `edge-audit runs show` read it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.message_pump import MessagePump
from textual.notifications import SeverityLevel
from textual.reactive import reactive
from textual.worker import Worker, WorkerState, get_current_worker

from audit.errors import Cancelled, UserError
from audit.models import LoadOptions, load_model
from audit.models.aliases import DEFAULT_ALIAS
from audit.progress import Job
from audit.store import default_store_path
from audit.threads import apply_torch_threads, resolve_threads
from tui.messages import JobEnded, JobFinished, JobProgress, ModelChoicesRead, ReportRead, RunsRead
from tui.screens.base import MODES as SCREEN_KEYS, FormError, typed_path
from tui.screens.check import CheckRead, CheckScreen
from tui.screens.compare import CompareScreen
from tui.screens.compress import CompressScreen
from tui.screens.dialogs import AskPathScreen, ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.history import HistoryScreen
from tui.screens.models import ModelsScreen
from tui.screens.probe import ProbeScreen
from tui.session import JobStatus, Loader, Session, continue_session, open_session, read_report
from tui.widgets.device_panel import DeviceFeed, LiveDevice

# Cores a job's computing threads leave to the app's screen and sampler.
APP_RESERVED_CORES = 1


@dataclass
class StepsStored(Message):
    """How many steps of the session's run are stored, and when the last one finished."""

    run_id: int
    mark: tuple[int, float]


class EdgeAuditApp(App[int]):
    TITLE = "edge-audit"
    CSS_PATH = "app.tcss"
    MODES = {
        "models": ModelsScreen,
        "compress": CompressScreen,
        "probe": ProbeScreen,
        "compare": CompareScreen,
        "history": HistoryScreen,
        "check": CheckScreen,
    }
    BINDINGS = [
        *(Binding(key, f"switch_mode('{mode}')", label, show=False) for key, mode, label in SCREEN_KEYS),
        Binding("question_mark", "help", "Help"),
        Binding("escape", "cancel_job", "Cancel job"),
        Binding("ctrl+s", "save_plan", "Save plan", show=False),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    # The session's run read back; None before its first step. Screens watch it.
    report: reactive[dict[str, Any] | None] = reactive(None, always_update=True)
    # What the Compare screen shows: the session's run, or a run opened from History.
    compared: reactive[dict[str, Any] | None] = reactive(None, always_update=True)
    # The field check the Check screen shows: the last one run here, or one opened from History.
    field_check: reactive[dict[str, Any] | None] = reactive(None, always_update=True)
    # Bumped whenever the session (model, plan, run) changes.
    session_rev: reactive[int] = reactive(0)
    # The model being loaded now (a spec, or a stored run's model), None between loads. Screens watch it.
    loading: reactive[str | None] = reactive(None)
    # The spec of the last load that failed: the Models screen offers it again in its path field.
    failed_load: reactive[str | None] = reactive(None, always_update=True)

    def __init__(
        self,
        model_spec: str = DEFAULT_ALIAS,
        options: LoadOptions | None = None,
        *,
        store: str | Path | None = None,
        device: DeviceFeed | None = None,
        loader: Loader | None = None,
    ) -> None:
        super().__init__()
        self.model_spec = model_spec
        # Jobs leave the screen a core: a busy UI thread would otherwise stall a job's threads.
        self.options = replace(options or LoadOptions(), reserve_cores=APP_RESERVED_CORES)
        self.store_path = Path(store) if store else default_store_path()
        self.store_label = str(store) if store else str(default_store_path())
        self.device_feed: DeviceFeed = device or LiveDevice()
        self.loader: Loader = loader or load_model
        self.session: Session | None = None
        self.job: JobStatus | None = None
        self.last_outcome: tuple[int, str, str] | None = None  # (job id, kind, "done" / "cancelled" / "failed")
        self.compared_run: int | None = None  # None: the session's run
        self._job_ids = 0
        self._load_spec: str | None = None  # the spec the running load was given, None for a stored run's
        self._stored_mark: tuple[int, float] | None = None  # the session's stored steps, as last seen
        self._quitting = False
        # Child processes (a profile runs in one) need multiprocessing's resource tracker; it
        # must start while stderr is still the terminal's, not the app's print capture, whose
        # file descriptor is not a real one.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()

    # -- start and stop ----------------------------------------------------------------------
    def on_mount(self) -> None:
        self.switch_mode("models")
        if isinstance(self.device_feed, LiveDevice):
            self._start_device()
        self.set_interval(1.0, self._check_stored_steps)
        # Said from the first paint; the load itself starts after it, since it imports the
        # inference libraries, which takes seconds (tens on a busy device).
        self.loading = self.model_spec.strip() or None
        self.call_after_refresh(self._load_at_start)

    def _load_at_start(self) -> None:
        if not self.load(self.model_spec):
            self.loading = None

    @work(thread=True, group="device", exit_on_error=False, name="device")
    def _start_device(self) -> None:
        assert isinstance(self.device_feed, LiveDevice)
        self.device_feed.start()

    def session_caption(self) -> str:
        session = self.session
        if session is None:
            return f"loading {self.loading}…" if self.loading else "no model"
        name = session.facts.name if session.facts else Path(session.model_spec).name
        run = f"run {session.run_id}" if session.run_id is not None else "no run yet"
        return f"{name} · {run} "

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information", timeout: float | None = None, markup: bool = False) -> None:
        """A notice, in plain text whoever asks for it (a screen's notify asks for markup): the
        paths, names and errors notices repeat are never read as markup, where a path with "[/]"
        in it made the notice raise as it was drawn, ending the app."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    # -- jobs --------------------------------------------------------------------------------
    def start_job(self, kind: str, title: str, make: Callable[[threading.Event], Job[Any]], owner: MessagePump | None = None) -> bool:
        """Run a core job in a worker thread; one at a time, since they share the device's cores."""
        if self.job is not None:
            if self.job.cancel.is_set():
                self.notify(f"{self.job.title} is being cancelled: it stops after its current step; start this again then", severity="warning")
            else:
                self.notify(f"{self.job.title} is running: wait for it, or press esc to cancel it", severity="warning")
            return False
        self._job_ids += 1
        self.job = JobStatus(self._job_ids, kind, title, threading.Event(), owner or self)
        self._run_job(self.job, make, owner or self)
        self.refresh_bindings()
        return True

    @work(thread=True, exclusive=True, group="job", exit_on_error=False)
    def _run_job(self, status: JobStatus, make: Callable[[threading.Event], Job[Any]], owner: MessagePump) -> Any:
        worker = get_current_worker()
        self._fit_threads(status.kind)
        job = make(status.cancel)
        while True:
            if worker.is_cancelled:
                status.cancel.set()
            try:
                event = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            status.latest = event
            owner.post_message(JobProgress(status.job_id, status.kind, event))
        owner.post_message(JobFinished(status.job_id, status.kind, status.title, result))
        return result

    def _fit_threads(self, kind: str) -> None:
        """Fit the loaded PyTorch model's threads to the cores free as a job starts (the device's
        load changes while the app is open), unless the user gave --threads."""
        model = getattr(self.session, "model", None)
        if kind == "load" or self.options.threads or getattr(model, "backend", None) != "pytorch":
            return
        choice = resolve_threads(None, self.options.reserve_cores, row_workers=True)
        apply_torch_threads(choice)
        model.threads = choice

    def action_cancel_job(self) -> None:
        if self.job is not None and not self.job.cancel.is_set():
            self.job.cancel.set()
            self.notify(f"cancelling {self.job.title}: it stops after the current step")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_job":
            return self.job is not None
        return True

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        """The one place failures become notices: a message, never a traceback."""
        worker = event.worker
        if event.state == WorkerState.ERROR:
            self._notify_failure(worker)
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if worker.group == "job":
            if self.job is not None:
                outcome = {WorkerState.SUCCESS: "done", WorkerState.CANCELLED: "cancelled"}.get(event.state, "failed")
                if isinstance(worker.error, Cancelled):
                    outcome = "cancelled"
                error = "" if worker.error is None else str(worker.error)
                self.last_outcome = (self.job.job_id, self.job.kind, outcome)
                self.job.owner.post_message(JobEnded(self.job.job_id, self.job.kind, outcome, error))
                if self.job.kind == "load":
                    self._load_ended(outcome, worker.error)
            self.job = None
            self.refresh_bindings()
            self.session_rev += 1
            if self._quitting:
                self._close_session()
            else:
                self.refresh_report()
        elif worker.group == "close":
            self.exit(0)

    def _notify_failure(self, worker: Worker) -> None:
        error = worker.error
        if worker.group == "job" and self.job is not None and self.job.kind == "load":
            return  # `_load_ended` says it in one line
        title = self.job.title if worker.group == "job" and self.job is not None else worker.name or "edge-audit"
        if isinstance(error, Cancelled):
            self.notify("cancelled; every step that finished is kept in the store", title=title, severity="warning")
        elif isinstance(error, UserError):
            self.notify(str(error), title=f"{title}: failed", severity="error", timeout=12)
        else:
            self.notify(f"{type(error).__name__}: {error}", title=f"{title}: failed", severity="error", timeout=12)

    # -- the session -------------------------------------------------------------------------
    def continue_run(self, run_id: int) -> bool:
        """Make a stored run the session again (its model loaded), to add steps to it."""
        if self.session is not None and self.session.run_id == run_id:
            self.notify(f"run {run_id} is already this session")
            return False
        started = self.start_job(
            "load", f"continue run {run_id}", lambda cancel: continue_session(run_id, self.store_path, self.options, self.loader, cancel)
        )
        if started:
            self._load_spec, self.loading = None, f"the model of run {run_id}"
        return started

    def load(self, spec: str) -> bool:
        """Load exactly `spec` (as typed or chosen) into a new session."""
        spec = spec.strip()
        if not spec:
            return False
        started = self.start_job(
            "load", f"load {spec}", lambda cancel: open_session(spec, self.store_path, self.options, self.loader, cancel)
        )
        if started:
            self._load_spec, self.loading = spec, spec
        return started

    def _load_ended(self, outcome: str, error: BaseException | None) -> None:
        """A load that did not finish is one line; the model loaded before stays, and a spec
        that failed goes back to the Models screen's path field, to be corrected."""
        what, spec = self.loading, self._load_spec
        self.loading = self._load_spec = None
        if outcome == "done":
            return
        session = self.session
        kept = f" ({session.facts.name} stays loaded)" if session is not None and session.facts is not None else ""
        if outcome == "cancelled":
            self.notify(f"loading {what} cancelled{kept}", severity="warning")
            return
        reason = " ".join(str(error).split())  # one line, whatever the loader said
        if not isinstance(error, UserError):
            reason = f"{type(error).__name__}: {reason}"
        self.notify(f"not loaded: {reason}{kept}", severity="error", timeout=12)
        if spec is not None:
            self.failed_load = spec

    @on(JobFinished)
    def _job_finished(self, message: JobFinished) -> None:
        if message.kind == "load":
            previous, self.session = self.session, message.result
            self.model_spec = self.session.model_spec
            self.compared_run = None
            self.report = None
            self.compared = None
            if previous is not None:
                self._close_previous(previous)
            if self.session.run_id is None:
                self.notify(f"loaded {self.session.facts.name}; a new session starts with its first step")
            else:
                self.notify(f"loaded {self.session.facts.name}; run {self.session.run_id} is the session again")
                self.refresh_report()
        elif message.kind == "plan":
            self.open_run(message.result.run_id)
            from audit.verdict import run_verdict

            self.notify(
                f"run {message.result.run_id} finished: {run_verdict(message.result.gate).line()}",
                severity="information" if message.result.exit_code == 0 else "error",
            )
        elif message.kind == "export":
            self.notify(f"report written: {message.result['html']}", timeout=10)

    @work(thread=True, group="read", exit_on_error=False, name="close the previous model")
    def _close_previous(self, session: Session) -> None:
        session.close()

    @work(thread=True, group="read", exit_on_error=False, name="list the models")
    def read_model_choices(self, target: MessagePump) -> None:
        from tui.screens.models import model_choices

        target.post_message(ModelChoicesRead(model_choices(self.store_path)))

    @work(thread=True, group="read", exit_on_error=False, name="list the runs")
    def read_runs(self, target: MessagePump) -> None:
        """The stored runs, then the stored field checks, for History."""
        from tui.screens.history import ChecksRead, stored_checks, stored_runs

        try:
            runs, checks = stored_runs(self.store_path), stored_checks(self.store_path)
        except UserError as error:
            # Said on the screen, where the runs would be: a notice each time History is read
            # would repeat it.
            runs, checks, unreadable = [], [], " ".join(str(error).split())
        else:
            unreadable = ""
        target.post_message(RunsRead(runs, unreadable))
        target.post_message(ChecksRead(checks))

    @work(thread=True, group="read", exit_on_error=False, name="open check")
    def open_check(self, check_id: int) -> None:
        """Show a stored field check on the Check screen."""
        from tui.screens.check import stored_check

        self.post_message(CheckRead(stored_check(self.store_path, check_id)))

    @on(CheckRead)
    def _check_read(self, message: CheckRead) -> None:
        self.field_check = message.result
        self.switch_mode("check")

    def _check_stored_steps(self) -> None:
        """While a job runs, the session's run is read again each time it stores a step, so
        that the screens show finished steps at once rather than when the whole job ends."""
        session = self.session
        if self.job is not None and session is not None and session.run_id is not None:
            self._read_stored_mark(session, session.run_id)

    @work(thread=True, group="read", exit_on_error=False, name="read the session's run")
    def _read_stored_mark(self, session: Session, run_id: int) -> None:
        try:
            mark = session.stored_mark(run_id)
        except UserError:
            return  # the store busy this second: read again at the next, rather than a notice each second
        self.post_message(StepsStored(run_id, mark))

    @on(StepsStored)
    def _steps_stored(self, message: StepsStored) -> None:
        session = self.session
        if self.job is None or session is None or session.run_id != message.run_id or message.mark == self._stored_mark:
            return
        self._stored_mark = message.mark
        self.refresh_report()

    @work(thread=True, group="read", exit_on_error=False, name="read the session's run")
    def refresh_report(self) -> None:
        session = self.session
        if session is None or session.run_id is None:
            return
        self.post_message(ReportRead(session.run_id, session.report(), True))

    @work(thread=True, group="read", exit_on_error=False, name="open run")
    def open_run(self, run_id: int) -> None:
        """Show a stored run in the Compare screen."""
        self.post_message(ReportRead(run_id, read_report(self.store_path, run_id), False))

    @work(thread=True, group="read", exit_on_error=False, name="compare runs")
    def read_compared_runs(self, first: int, second: int, target: MessagePump) -> None:
        """Two stored runs side by side, for History."""
        from tui.screens.runs_compare import RunsCompared, read_compared_runs

        target.post_message(RunsCompared(read_compared_runs(self.store_path, first, second)))

    @on(ReportRead)
    def _report_read(self, message: ReportRead) -> None:
        if message.session:
            if self.session is None or message.run_id != self.session.run_id:
                return
            self.report = message.report
            if self.compared_run is None:
                self.compared = message.report
        else:
            self.compared_run = message.run_id
            self.compared = message.report
            self.switch_mode("compare")

    def show_session_comparison(self) -> None:
        self.compared_run = None
        self.compared = self.report

    # -- keys --------------------------------------------------------------------------------
    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.current_mode))

    def action_save_plan(self) -> None:
        if self.session is None:
            self.notify("load a model first", severity="warning")
            return
        try:
            folder = Path.cwd()
        except OSError:  # the folder the app was started in is gone
            folder = Path.home()
        default = folder / "edge-audit-plan.toml"
        self.push_screen(AskPathScreen("Save the session as a plan file", str(default)), self._save_plan)

    def _save_plan(self, path: str | None) -> None:
        if not path or self.session is None:
            return
        try:
            target = typed_path(path, "plan file")
        except FormError as error:
            self.notify(f"plan not saved: {error}", severity="error")
            return
        self._write_plan(target, self.session)

    @work(thread=True, group="read", exit_on_error=False, name="save plan")
    def _write_plan(self, path: Path, session: Session) -> None:
        from audit import atomic
        from audit.plans import plan_to_toml
        from tui.cli.outputs import clashes

        # As the command line refuses an output that is one of its inputs: the plan written over
        # the results store or the model would destroy what the session has done.
        for clash in clashes(path, self._session_inputs(session)):
            raise UserError(f"{path} {clash}; choose another file")
        atomic.write_text(path, plan_to_toml(session.plan))
        self.call_from_thread(self.notify, f"plan saved: {path} (run it with: edge-audit run {path})")

    def _session_inputs(self, session: Session) -> list[tuple[str, Path | None]]:
        """What the session reads and writes, each named as a notice names it."""
        from tui.cli.outputs import model_paths, suite_path

        plan = session.plan
        inputs: list[tuple[str, Path | None]] = [("the results store", self.store_path), ("the run's folder", session.work_dir)]
        inputs += [("the model", path) for path in model_paths(plan.model)]
        inputs += [(f"the variant {v.name}", Path(v.path)) for v in plan.variants if v.path]
        inputs += [("the probe data", suite_path(suite)) for suite in plan.probes.suites]
        for what, text in (("the calibration text", plan.calibration.file), ("the perplexity text", plan.perplexity.text)):
            inputs.append((what, Path(text) if text else None))
        return inputs

    async def action_quit(self) -> None:
        if self._quitting:
            return
        if self.job is not None:
            self.push_screen(
                ConfirmScreen(f"{self.job.title} is running.\nQuit? It is cancelled; every step that finished stays in the store."),
                self._quit_confirmed,
            )
            return
        self._quitting = True
        self._close_session()

    def _quit_confirmed(self, yes: bool | None) -> None:
        if not yes:
            return
        self._quitting = True
        if self.job is None:
            self._close_session()
        else:
            self.job.cancel.set()
            self.notify("cancelling; the app closes when the job has stopped")

    @work(thread=True, group="close", exit_on_error=False, name="close")
    def _close_session(self) -> None:
        """Mark the session's run (finished, or interrupted so that `run --resume` completes it)."""
        try:
            if self.session is not None:
                self.session.close()
        finally:
            stop = getattr(self.device_feed, "stop", None)
            if callable(stop):
                stop()


def create_app(
    model_spec: str = DEFAULT_ALIAS,
    options: LoadOptions | None = None,
    *,
    store: str | Path | None = None,
    device: DeviceFeed | None = None,
    loader: Loader | None = None,
) -> EdgeAuditApp:
    """The app, ready to run; tests pass a frozen device feed and a store of their own."""
    return EdgeAuditApp(model_spec, options, store=store, device=device, loader=loader)


def run_app(model_spec: str = DEFAULT_ALIAS, options: LoadOptions | None = None, store: str | Path | None = None) -> int:
    return create_app(model_spec, options, store=store).run() or 0
