"""The app's session: the model being audited and the run in the results store that records
every step the operator takes, driven through the same core calls as `edge-audit run`."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from audit.compress.recipe import QUANTIZATION_SCHEME_NAMES
from audit.errors import UserError
from audit.models import LanguageModel, LoadOptions
from audit.models.interface import ModelFacts
from audit.paths import probe
from audit.plans import CalibrationSpec, Plan, ProbeSpec, VariantSpec, default_plan, revise_plan, variant_name_problem
from audit.progress import Job, Progress, StepCounter
from audit.results import RunView, report_data
from audit.runner import (
    BASELINE,
    COMPRESS,
    NOISE_PREFIX,
    PERPLEXITY,
    PROBE_PREFIX,
    PROFILE,
    add_variant,
    close_run,
    driving,
    run_folder,
    run_steps,
    start_run,
    steps_for,
    update_plan,
)
from audit.run.steps import baseline_recipe
from audit.store import ResultsStore, default_store_path

SESSION_NAME = "app-session"

Loader = Callable[[str, LoadOptions, "threading.Event | None"], Job[LanguageModel]]


def session_plan(model_spec: str, template: Plan | None = None) -> Plan:
    """A session starts as the shipped default plan (its probes, calibration, perplexity,
    profile and gate rules) on the chosen model, with no variants yet."""
    local = Path(model_spec).expanduser()
    model = str(local.resolve()) if probe(local, "model") is not None else model_spec
    # Its own plan, not the file it starts from: stored with the run, that file would be named
    # as its source, and in every error about it.
    return revise_plan(template or default_plan(), path=None, name=SESSION_NAME, model=model, variants=())


def with_suite(probes: ProbeSpec, suite: str) -> ProbeSpec:
    """`probes` with `suite` among its suites (after the plan's own), as a session measures it."""
    return probes if suite in probes.suites else replace(probes, suites=probes.suites + (suite,))


def loaded_method(model_spec: str, facts: ModelFacts | None) -> tuple[str, float | None]:
    """The loaded model's method and sparsity: its compression on record, else "dense" only
    when its weights are (under 1% exact zeros), else "sparse" with the share measured."""
    recipe = baseline_recipe(model_spec)
    if recipe["method"] != "dense":
        return recipe["method"], recipe["sparsity"]
    measured = facts.weight_sparsity if facts is not None else None
    if measured is not None and measured >= 0.01:
        return "sparse (as loaded)", measured
    return "dense", 0.0


@dataclass
class JobStatus:
    """The job running now; its worker thread replaces `latest` (one reference, read by timers)."""

    job_id: int
    kind: str
    title: str
    cancel: threading.Event
    owner: Any = None  # the screen that started it, told when it ends
    started: float = field(default_factory=time.monotonic)
    latest: Progress | None = None


class Session:
    """The loaded model, its plan and its run. Jobs run one at a time in a worker thread; only
    they change the plan and the run, the interface reads them between jobs."""

    def __init__(self, plan: Plan, store_path: Path | None, options: LoadOptions, model: LanguageModel | None = None, facts: ModelFacts | None = None) -> None:
        self.plan = plan
        self.store_path = Path(store_path) if store_path else default_store_path()
        self.options = options
        self.model = model
        self.facts = facts
        # Read once, off the interface's thread (sessions are opened in a worker).
        self.baseline_method = loaded_method(plan.model, facts)
        self.run_id: int | None = None
        self.work_dir: Path | None = None
        # The session holds its run from its first step until it is closed: another process
        # (edge-audit run --resume) does not run steps of it meanwhile.
        self.holding = contextlib.ExitStack()
        # Variants whose compress step is stored: compressing one again under its name is a duplicate.
        self.compressed: set[str] = set()

    # -- what the screens read ------------------------------------------------------------------
    @property
    def model_spec(self) -> str:
        return self.plan.model

    def targets(self) -> list[str]:
        return [BASELINE] + [v.name for v in self.plan.variants]

    def has_variant(self, name: str) -> bool:
        return any(v.name == name for v in self.plan.variants)

    def variant_to_add(self, spec: VariantSpec) -> VariantSpec:
        """What compressing `spec` adds to the session: `spec` itself when its name is free or
        names the same recipe whose compression did not finish; the same recipe under the first
        free name `NAME-2`, `NAME-3`, ... when its name is taken by another recipe. Refused
        (UserError) when that recipe is already compressed under that name."""
        if spec.name == BASELINE:
            raise UserError(f"{BASELINE!r} is the loaded model itself: give the variant another name")
        if problem := variant_name_problem(spec.name):
            raise UserError(problem)
        variants = {v.name: v for v in self.plan.variants}
        name, suffix = spec.name, 1
        while (taken := variants.get(name)) is not None:
            if replace(taken, name=spec.name) == spec:
                if name in self.compressed:
                    raise UserError(f"{name} is already in this session with this recipe: to compress it again, give it another name")
                return taken
            suffix += 1
            name = f"{spec.name}-{suffix}"
        return replace(spec, name=name)

    def stored_mark(self, run_id: int) -> tuple[int, float]:
        """How many steps of the run are stored and when the last one finished: it changes
        whenever a job stores a step (read in a worker while the job runs)."""
        with ResultsStore(self.store_path, readonly=True) as store:
            finished = [s["finished_at"] or 0.0 for s in store.steps(run_id) if s["status"] == "done"]
        return len(finished), max(finished, default=0.0)

    # -- the run --------------------------------------------------------------------------------
    def _ensure_run(self, plan: Plan) -> int:
        """The session's run, created with `plan` on first use; later plans update it."""
        if self.run_id is None:
            self.run_id, self.work_dir = start_run(plan, self.store_path)
            self.holding.enter_context(driving(self.run_id, self.work_dir))
            self.plan = plan
        elif plan != self.plan:
            self.plan = update_plan(self.store_path, self.run_id, plan)
        return self.run_id

    def compress(self, spec: VariantSpec, calibration: CalibrationSpec, cancel: threading.Event | None) -> Job[str]:
        """Add `spec` as a variant and compress it; a variant of the same name and recipe whose
        compression was cancelled is compressed again (`variant_to_add` names a new one)."""
        from audit.compress.layers import prunable_layers
        from audit.compress.output import float_torch_model
        from audit.compress.prune import check_recipe
        if spec.prune is not None:
            check_recipe(spec.prune, calibration)
            if self.model is not None:
                prunable_layers(float_torch_model(self.model, "pruning"), spec.prune.exclude)
        if spec.quantize is not None:
            QUANTIZATION_SCHEME_NAMES.entry(spec.quantize.scheme)
        yield Progress("compress", 0, None, f"{spec.name}: starting")
        run_id = self._ensure_run(revise_plan(self.plan, calibration=calibration))
        if self.has_variant(spec.name):
            existing = next(v for v in self.plan.variants if v.name == spec.name)
            if existing != spec:
                raise UserError(f"a variant named {spec.name!r} already exists with another recipe; choose another name")
            if spec.name in self.compressed:
                raise UserError(f"{spec.name} is already in this session with this recipe; nothing was compressed again")
        else:
            self.plan = add_variant(self.store_path, run_id, spec)
        stored = yield from run_steps(self.store_path, run_id, spec.name, [COMPRESS], self.options, cancel)
        if COMPRESS in stored:
            self.compressed.add(spec.name)
        return spec.name

    def measure_kinds(self, plan: Plan, target: str, suite: str) -> list[str]:
        wanted = {PERPLEXITY, PROFILE, PROBE_PREFIX + suite, NOISE_PREFIX + suite}
        return [k for k in steps_for(plan, target) if k in wanted]

    def measured_plan(self, suite: str, probes: ProbeSpec, perplexity: bool, profile: bool) -> Plan:
        """The session's plan as `measure` revises it for these settings (PlanError when the
        settings cannot make a plan)."""
        return revise_plan(
            self.plan,
            probes=with_suite(probes, suite),
            perplexity=replace(self.plan.perplexity, enabled=perplexity),
            profile=replace(self.plan.profile, enabled=profile),
        )

    def measure(
        self,
        targets: list[str],
        suite: str,
        probes: ProbeSpec,
        perplexity: bool,
        profile: bool,
        cancel: threading.Event | None,
        *,
        pending_only: bool = False,
    ) -> Job[dict[str, list[str]]]:
        """Perplexity, the probe suite and the profile of each target, as the settings ask;
        with `pending_only`, only the steps not stored yet. Returns the steps stored per target."""
        plan = self.measured_plan(suite, probes, perplexity, profile)
        if plan != self.plan:
            from audit.probes.suites import load_suite

            # Read before it joins the run's plan: a suite that does not read would stay there,
            # its probe failing each time the run is resumed, and the run never finish.
            load_suite(suite, **plan.probes.suite_options())
        run_id = self._ensure_run(plan)
        stored: dict[str, list[str]] = {}
        done: set[tuple[str, str]] = set()
        if pending_only:
            with ResultsStore(self.store_path) as store:
                done = {(s["variant"], s["kind"]) for s in store.steps(run_id) if s["status"] == "done"}
            # A variant whose compression did not finish has no weights of this run to measure:
            # left out here; asked for by name, it is refused (`run_steps`).
            targets = [t for t in targets if t == BASELINE or self.plan.variant(t).path is not None or (t, COMPRESS) in done]
        todo = {target: [k for k in self.measure_kinds(self.plan, target, suite) if (target, k) not in done] for target in targets}
        steps = StepCounter([(target, kind) for target in targets for kind in todo[target]])
        for index, target in enumerate(targets):
            kinds = todo[target]
            if not kinds:
                continue
            # Which model the events that follow are about, for a live view of several.
            yield Progress("target", index, len(targets), target)
            model = self.model if target == BASELINE else None
            stored[target] = yield from run_steps(self.store_path, run_id, target, kinds, self.options, cancel, model=model, steps=steps)
        return stored

    def report(self) -> dict[str, Any] | None:
        """The run's report data with the gate's verdict so far (None before the first step)."""
        if self.run_id is None:
            return None
        return read_report(self.store_path, self.run_id)

    def close(self) -> str | None:
        """Set the run's status (finished when every planned step is stored) and let the model go."""
        with self.holding:  # let go of the run once its status is set
            status = close_run(self.store_path, self.run_id) if self.run_id is not None else None
        if self.model is not None:
            self.model.close()
            self.model = None
        return status


def nothing_stored(store_path: Path | str) -> bool:
    """No results store to read at `store_path`: no file, or an empty one (made by `touch`, or a
    new store's file before its first write), which a read-only open refuses as an error. The
    screens that list what is stored show nothing stored yet then."""
    path = Path(store_path)
    try:
        return not path.exists() or path.stat().st_size == 0
    except FileNotFoundError:  # removed between the two looks
        return True


def read_report(store_path: Path, run_id: int) -> dict[str, Any]:
    """Any stored run's report data, with its gate rules checked against what is stored."""
    with ResultsStore(store_path, readonly=True) as store:
        return view_report(RunView(store, run_id))


def view_report(view: RunView) -> dict[str, Any]:
    """A run already read, as `read_report` gives it."""
    return report_data(view, view.gate() if view.plan.gate.active else None)


def continue_session(
    run_id: int, store_path: Path | None, options: LoadOptions, loader: Loader, cancel: threading.Event | None
) -> Job[Session]:
    """Load the model of a stored run and make that run the session again: its variants and
    stored steps stay, new steps are added to it."""
    from audit.runner import stored_plan

    path = Path(store_path) if store_path else default_store_path()
    with ResultsStore(path) as store:
        plan = stored_plan(store, run_id)
        work_dir = run_folder(store, store.run(run_id))
    holding = contextlib.ExitStack()
    holding.enter_context(driving(run_id, work_dir))  # refused before the model is loaded
    with holding:
        model = yield from loader(plan.model, options, cancel)
        yield Progress("load", 2, 2, "reading the model's facts")
        session = Session(plan, path, options, model, model.facts())
        session.holding = holding.pop_all()
    session.run_id = run_id
    session.work_dir = work_dir
    with ResultsStore(path) as store:
        store.mark_running(run_id)
        session.compressed = {s["variant"] for s in store.steps(run_id) if s["kind"] == COMPRESS and s["status"] == "done"}
    return session


def open_session(
    spec: str, store_path: Path | None, options: LoadOptions, loader: Loader, cancel: threading.Event | None, template: Plan | None = None
) -> Job[Session]:
    """Load `spec` and start a session on it (its run is created with its first step)."""
    plan = session_plan(spec, template)
    model = yield from loader(plan.model, options, cancel)
    yield Progress("load", 2, 2, "reading the model's facts")
    return Session(plan, store_path, options, model, model.facts())
