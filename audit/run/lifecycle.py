"""A run's life in the results store: created or resumed, run whole or step by step, revised,
and closed with its gate."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from audit.compress.recipe import PRUNING_METHOD_NAMES, check_calibration_memory
from audit.errors import Cancelled, UserError
from audit.paths import os_reason, require_working_folder, shown
from audit.probes.items import is_int
from audit.models.loader import LoadOptions
from audit.plans import Plan, VariantSpec, parse_plan, read_stored_plan, revise_plan, variant_name_problem
from audit.progress import Job, Progress, StepCounter
from audit.run.steps import (
    BASELINE,
    COMPRESS,
    StepRecord,
    done_steps,
    driving,
    named,
    run_folder,
    runs_folder,
    steps_for,
    stored_baseline,
    stored_fingerprint,
    variant_names,
    variant_recipe,
)
from audit.store import ResultsStore, default_store_path


@dataclass(frozen=True)
class RunOptions:
    store: Path | None = None  # None: the default store
    resume: int | None = None  # a run id to continue
    workers: int = 1  # variants run in this many processes at once
    ray_address: str | None = None  # run variants as Ray tasks on this cluster ("local" starts one)
    work_dir: Path | None = None  # where variant folders go; default: beside the store, per run
    load: LoadOptions = LoadOptions()

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        if self.workers > 1 and self.ray_address:
            raise UserError("choose either --workers or --ray, not both")
        if self.ray_address:
            from audit.run.parallel import ray_endpoint

            ray_endpoint(self.ray_address)  # an address of no form Ray reads is refused before anything runs


@dataclass
class RunOutcome:
    run_id: int
    store: Path
    status: str
    exit_code: int
    gate: dict[str, Any] | None
    report: dict[str, Any]
    report_files: dict[str, str] = field(default_factory=dict)


def software_versions() -> dict[str, Any]:
    from hardware.software import read_runtime

    from audit import __version__

    return {"edge_audit": __version__, **read_runtime().to_dict()}


def device_facts() -> dict[str, Any]:
    from hardware.device import device_report

    report = device_report(runtime=False)
    device = report.get("device") or {}
    cpu = report.get("cpu") or {}
    memory = report.get("memory") or {}
    return {
        "name": device.get("name"),
        "kind": device.get("kind"),
        "cpu_model": cpu.get("model"),
        "cores": cpu.get("cores_usable"),
        "ram_total_mb": memory.get("total_mb"),
        "os": (report.get("os") or {}).get("name"),
    }


def start_or_resume(plan: Plan | None, options: RunOptions) -> tuple[ResultsStore, int, Plan, Path]:
    require_working_folder()  # the run's folder and a relative store or --work-dir are found from it
    store = ResultsStore(options.store or default_store_path())
    if options.resume is not None:
        record = store.run(options.resume)
        if record.status == "finished":
            raise UserError(f"run {record.id} already finished; nothing to resume")
        stored = parse_plan(record.plan_text, Path(record.plan_path) if record.plan_path else None, stored=True)
        return store, record.id, stored, _work_dir(store, record.id)
    assert plan is not None
    run_id = store.create_run(
        name=plan.name,
        model=plan.model,
        plan_text=plan.text,
        plan_path=plan.path,
        device=device_facts(),
        software=software_versions(),
        variants=[(name, variant_recipe(plan, name)) for name in variant_names(plan)],
    )
    work_dir = _claim_folder(Path(options.work_dir) if options.work_dir else runs_folder(store), f"run-{run_id}")
    store.set_work_dir(run_id, str(work_dir))
    return store, run_id, plan, work_dir


def _claim_folder(parent: Path, name: str) -> Path:
    """A new folder `parent/name` for a new run's variants, or `name-2`, `name-3`, ... when that
    one exists: another store beside this one (or one deleted and made again) numbers its runs
    from 1 too, and a run must never measure, or overwrite, another run's variants. Made here,
    so two processes cannot claim the same one."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            folder = parent / (name if n == 1 else f"{name}-{n}")
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue
    except OSError as exc:
        raise UserError(f"cannot make a folder for the run's variants in {shown(parent)}: {os_reason(exc)}") from None
    raise UserError(f"{shown(parent)} already holds {name} and 9,999 more like it: give another --work-dir")


def _work_dir(store: ResultsStore, run_id: int) -> Path:
    return run_folder(store, store.run(run_id))



def check_before_running(plan: Plan) -> None:
    """Refuse, in one line and before a run is stored, a plan that would fail at one of its
    steps for a reason to be seen now: a probe suite that is missing or does not read as its
    format (the loaders read a suite in moments); when the model's config says what they need,
    a calibration window longer than the model's context, calibration samples that cannot fit
    in memory, and a profile's prompt and new tokens beyond the context. Found at the step
    instead, the run would be stored as failed after the baseline and a variant were measured,
    and fail again each time it is resumed."""
    from audit.probes.suites import load_suite

    for spec in plan.probes.suites:
        try:
            load_suite(spec, **plan.probes.suite_options())
        except UserError as exc:
            raise UserError(f"probes.suites: {spec}: {exc}") from None
    calibrated = [v.name for v in plan.variants if v.prune is not None and PRUNING_METHOD_NAMES.meta(v.prune.method)["needs"]]
    if not calibrated and not plan.profile.enabled:
        return
    config = model_text_config(plan.model)
    context = _positive_int(config.get("max_position_embeddings"))
    who = f"{', '.join(calibrated)} calibrate{'s' if len(calibrated) == 1 else ''}"
    calibration = plan.calibration
    if calibrated and context and calibration.seqlen > context:
        # The Compress form's check, made before the run rather than at its first calibrated variant.
        raise UserError(f"calibration.seqlen: calibration sequence length {calibration.seqlen} exceeds the model's context length "
                        f"{context} ({who}); give a seqlen of at most {context}")
    if calibrated:
        # The walk holds one hidden state per calibration token, at 2 bytes a value at the
        # least: the step's own check, with what is surely needed.
        hidden = _positive_int(config.get("hidden_size")) or 0
        try:
            check_calibration_memory(calibration.nsamples, calibration.seqlen, bytes_per_token=2 * hidden)
        except UserError as exc:
            raise UserError(f"calibration.nsamples: {exc} ({who}); give fewer samples") from None
    profile = plan.profile
    if profile.enabled and context and profile.prompt_tokens + profile.new_tokens > context:
        # The profile step's own check (`audit.profile.profile_loaded`), made before any step runs.
        raise UserError(f"profile: {profile.prompt_tokens} prompt + {profile.new_tokens} new tokens exceed the model's context "
                        f"of {context} tokens; give fewer prompt_tokens or new_tokens")


def _positive_int(value: Any) -> int | None:
    return value if is_int(value) and value > 0 else None


def model_text_config(model: str) -> dict[str, Any]:
    """The text model's part of the config loading `model` would give it (`known_config`): its
    `text_config`'s keys over the top level's; empty when only loading the model would tell (a
    hub model not downloaded yet, a source with a problem)."""
    from audit.models.loader import known_config

    config = known_config(model)
    text_config = config.get("text_config")
    return {**config, **text_config} if isinstance(text_config, dict) else config


def run_plan(plan: Plan | None, options: RunOptions = RunOptions(), cancel: threading.Event | None = None) -> Job[RunOutcome]:
    """Run (or resume) a plan: every variant's steps, each committed as it finishes; then the
    comparison against the baseline, the gate and the report data."""
    from audit.results import build_report, evaluate_run_gate
    from audit.run.execute import execute_variant, plan_threads
    from audit.run.parallel import check_ray_reachable, run_in_processes, run_on_ray

    require_working_folder()
    if plan is not None:
        plan_threads(plan)  # refused before a run is started, not at its profile step
        check_before_running(plan)
    if options.ray_address:
        check_ray_reachable(options.ray_address)  # before a run is stored for it
    store, run_id, plan, work_dir = start_or_resume(plan, options)
    hold = contextlib.ExitStack()
    try:
        hold.enter_context(driving(run_id, work_dir))
    except BaseException as exc:
        if options.resume is None:  # a run made for nothing: say why it stopped
            store.finish_run(run_id, "failed", {"error": str(exc)}, 2)
        store.close()  # a resumed one is left as its driver keeps it
        raise
    if options.resume is not None:
        store.mark_running(run_id)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        names = variant_names(plan)
        total = sum(len(steps_for(plan, n)) for n in names)

        def finished() -> int:
            return sum(1 for n in names for k in steps_for(plan, n) if store.step(run_id, n, k) is not None)

        yield Progress("run", finished(), total, f"run {run_id}: {finished()}/{total} steps done", {"run_id": run_id})
        if options.ray_address:
            yield from run_on_ray(plan, run_id, store, options.ray_address, options.load, cancel, total, finished)
        elif options.workers > 1:
            yield from run_in_processes(plan, run_id, store, work_dir, options.workers, options.load, cancel, total, finished)
        else:
            done_by_name = {name: done_steps(store, run_id, plan, name) for name in names}
            steps = StepCounter([(n, k) for n in names for k in steps_for(plan, n) if k not in done_by_name[n]])
            # Resumed, the baseline may have been measured days ago: a variant is compressed from
            # its weights only if they are still the ones measured.
            source = stored_fingerprint(store, run_id, BASELINE) if options.resume is not None else None
            for name in names:
                done = done_by_name[name]
                job = execute_variant(plan, name, work_dir, done, lambda r: r.commit(store, run_id), options.load, cancel, steps=steps,
                                      baseline=stored_baseline(store, run_id), fingerprint=stored_fingerprint(store, run_id, name),
                                      source_fingerprint=source)
                for event in job:
                    yield replace(event, message=named(name, event.message))
                yield Progress("run", finished(), total, f"{name} done", {"run_id": run_id})
        # A plan without gate rules has no gate: no verdict, exit 0, as `close_run` stores it.
        gate = evaluate_run_gate(store, run_id, plan) if plan.gate.active else None
        exit_code = 0 if gate is None or gate.passed else 1
        gate_data = gate.to_dict() if gate is not None else None
        store.finish_run(run_id, "finished", gate_data, exit_code)
        # Read back from the finished run's record, as `runs report` reads it: the report a run
        # writes has its status, gate, exit code and end, and is the one any later reading gives.
        report = build_report(store, run_id, gate=gate)
        return RunOutcome(run_id, store.path, "finished", exit_code, gate_data, report)
    except (Cancelled, KeyboardInterrupt, SystemExit):
        store.finish_run(run_id, "interrupted", None, 130)
        raise
    except BaseException as exc:
        store.finish_run(run_id, "failed", {"error": str(exc)}, 2)
        raise
    finally:
        store.close()
        hold.close()


# -- runs driven one step at a time ----------------------------------------------------------------
def stored_plan(store: ResultsStore, run_id: int) -> Plan:
    """The plan a stored run follows (as revised by `add_variant` and `update_plan`)."""
    require_working_folder()  # a plan's relative paths are read from it
    record = store.run(run_id)
    return read_stored_plan(record.plan_text, record.plan_path)


def start_run(plan: Plan, store_path: Path | None = None, work_dir: Path | None = None) -> tuple[int, Path]:
    """Create a run of `plan` in the store without running anything; a front end then runs
    its steps one at a time with `run_steps` and adds variants with `add_variant`.
    Returns the run id and the folder its variants are written to."""
    store, run_id, _, folder = start_or_resume(plan, RunOptions(store=store_path, work_dir=work_dir))
    store.close()
    return run_id, folder


def add_variant(store_path: Path | None, run_id: int, spec: VariantSpec) -> Plan:
    """Add a variant to a stored run: its plan gains the variant and the store its recipe.
    Returns the revised plan."""
    if problem := variant_name_problem(spec.name):
        raise UserError(problem)
    with ResultsStore(store_path or default_store_path()) as store:
        plan = stored_plan(store, run_id)
        if spec.name == BASELINE or any(v.name == spec.name for v in plan.variants):
            raise UserError(f"run {run_id} already has a variant named {spec.name!r}; choose another name")
        revised = revise_plan(plan, variants=plan.variants + (spec,))
        store.add_variant(run_id, spec.name, variant_recipe(revised, spec.name), revised.text)
    return revised


def update_plan(store_path: Path | None, run_id: int, plan: Plan) -> Plan:
    """Store revised settings (probes, calibration, perplexity, profile, gate) for a run whose
    variants stay as they are; later steps follow them. Returns the plan as stored."""
    with ResultsStore(store_path or default_store_path()) as store:
        stored = stored_plan(store, run_id)
        if plan.variants != stored.variants or plan.model != stored.model:
            raise UserError(f"run {run_id}: a plan update cannot change the model or the variants (add variants with add_variant)")
        revised = revise_plan(plan)
        store.set_plan_text(run_id, revised.text)
    return revised


def run_steps(
    store_path: Path | None,
    run_id: int,
    name: str,
    kinds: Sequence[str],
    options: LoadOptions = LoadOptions(),
    cancel: threading.Event | None = None,
    *,
    model: Any = None,
    steps: StepCounter | None = None,
) -> Job[list[str]]:
    """Run the given steps of one variant of a stored run, again when they are already stored,
    committing each as it finishes (a cancelled step stores nothing; the finished ones stay).
    `model` is the variant already loaded, used by its perplexity and probe steps. `steps`
    numbers the steps when a job runs those of several variants (each event says "step 3 of 9").
    Steps not asked for are not run: a stored one that no longer holds (compressing again gave
    other weights) is marked to be measured again, by a later call or a resume.
    Returns the planned kinds stored, in order."""
    from audit.run.execute import execute_variant

    with ResultsStore(store_path or default_store_path()) as store:
        plan = stored_plan(store, run_id)
        if name not in variant_names(plan):
            raise UserError(f"run {run_id} has no variant {name!r}; its variants: {', '.join(variant_names(plan))}")
        planned = steps_for(plan, name)
        for kind in kinds:
            if kind not in planned:
                raise UserError(f"{name} has no step {kind!r} in run {run_id}; its steps: {', '.join(planned)}")
        work_dir = _work_dir(store, run_id)
        stored: list[str] = []

        def commit(step: StepRecord) -> None:
            step.commit(store, run_id)
            # Not the fingerprint stored with loading the model, nor a step marked not done.
            if step.kind in planned and step.error is None:
                stored.append(step.kind)

        # The steps stored, not the ones left out: a step never stored is neither marked to be
        # measured again nor measured when compressing again gives other weights.
        done = {k for k in planned if store.step(run_id, name, k) is not None}
        if COMPRESS in planned and COMPRESS not in kinds and COMPRESS not in done:
            # Its folder, if one is there, was not written by this run's compression (which
            # failed, or never ran): measuring it would audit weights this run never made.
            raise UserError(f"{name} is not compressed in run {run_id} (its compression did not finish): compress it before measuring it")
        with driving(run_id, work_dir):
            work_dir.mkdir(parents=True, exist_ok=True)
            yield from execute_variant(plan, name, work_dir, done, commit, options, cancel, model=model, steps=steps,
                                       baseline=stored_baseline(store, run_id), fingerprint=stored_fingerprint(store, run_id, name),
                                       only=kinds, source_fingerprint=stored_fingerprint(store, run_id, BASELINE))
    return stored


def close_run(store_path: Path | None, run_id: int) -> str:
    """Set the status of a run driven step by step: "finished" when every planned step is stored,
    else "interrupted", which `edge-audit run --resume` completes. Returns it. Either way the gate
    is checked against what is stored, so that a listing of the run says what its comparison
    says (an unmeasured check is never a pass)."""
    from audit.results import evaluate_run_gate

    with ResultsStore(store_path or default_store_path()) as store, driving(run_id, _work_dir(store, run_id)):
        plan = stored_plan(store, run_id)
        missing = [(n, k) for n in variant_names(plan) for k in steps_for(plan, n) if store.step(run_id, n, k) is None]
        gate = evaluate_run_gate(store, run_id, plan).to_dict() if plan.gate.active else None
        if missing:
            store.finish_run(run_id, "interrupted", gate, 130)
            return "interrupted"
        store.finish_run(run_id, "finished", gate, 0 if gate is None or gate["passed"] else 1)
        return "finished"
