"""Headless audit runs: the baseline and every variant of a plan, step by step, into the results store."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import queue
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from audit.errors import Cancelled, UserError
from audit.models import LoadOptions, load_model
from audit.plans import Plan, VariantSpec, parse_plan, revise_plan
from audit.progress import Job, Progress, check_cancel, drive, relay
from audit.store import ResultsStore, default_store_path

BASELINE = "baseline"
COMPRESS, PERPLEXITY, PROFILE = "compress", "perplexity", "profile"
PROBE_PREFIX = "probe:"
NOISE_PREFIX = "noise:"  # the baseline scored again with other seeds: sampled answers' own churn


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


@dataclass(frozen=True)
class StepRecord:
    """A finished step as the store keeps it."""

    variant: str
    kind: str
    started_at: float
    result: dict[str, Any]
    resources: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    suite: str | None = None
    metrics: list[tuple] = field(default_factory=list)

    def commit(self, store: ResultsStore, run_id: int) -> None:
        store.record_step(
            run_id,
            self.variant,
            self.kind,
            result=self.result,
            started_at=self.started_at,
            resources=self.resources,
            items=self.items,
            suite=self.suite,
            metrics=self.metrics,
        )


# -- what a plan asks for --------------------------------------------------------------------
def variant_names(plan: Plan) -> list[str]:
    return [BASELINE] + [v.name for v in plan.variants]


def variant_recipe(plan: Plan, name: str) -> dict[str, Any]:
    if name == BASELINE:
        return {"kind": "baseline", "model": plan.model, "method": "dense", "sparsity": 0.0}
    spec = plan.variant(name)
    data = asdict(spec)
    data.update(kind="variant", method=spec.method, sparsity=spec.sparsity)
    return data


def steps_for(plan: Plan, name: str) -> list[str]:
    """The steps of one variant, in order; the profile always comes last."""
    kinds = []
    if name != BASELINE and plan.variant(name).path is None:
        kinds.append(COMPRESS)
    if plan.perplexity.enabled:
        kinds.append(PERPLEXITY)
    kinds += [PROBE_PREFIX + suite for suite in plan.probes.suites]
    if name == BASELINE and plan.probes.sampled and plan.probes.noise_floor:
        kinds += [NOISE_PREFIX + suite for suite in plan.probes.suites]
    if plan.profile.enabled:
        kinds.append(PROFILE)
    return kinds


def variant_folder(work_dir: Path, name: str) -> Path:
    return work_dir / name


# -- one step each ----------------------------------------------------------------------------
def _sampled(job: Job[Any]) -> Job[tuple[Any, dict[str, Any]]]:
    from hardware.sampler import sample_job

    outcome = yield from sample_job(job)
    return outcome.value, outcome.resources


def compress_variant(plan: Plan, spec: VariantSpec, out: Path, options: LoadOptions, cancel: threading.Event | None) -> Job[dict[str, Any]]:
    """Prune and/or quantize the plan's model into `out` (replacing what a killed run left)."""
    from audit.compress.prune import PruneConfig, prune
    from audit.compress.quantize import QuantizeSettings, quantize

    source = plan.model
    result: dict[str, Any] = {"folder": str(out)}
    if spec.prune is not None:
        recipe = spec.prune
        target = out.with_name(out.name + ".pruned") if spec.quantize else out
        config = PruneConfig(
            method=recipe.method,
            sparsity=None if recipe.pattern != "unstructured" else recipe.sparsity,
            pattern=recipe.pattern,
            scope="row" if recipe.per_row else None,
            calib=Path(plan.calibration.file) if plan.calibration.file else None,
            nsamples=plan.calibration.nsamples,
            seqlen=plan.calibration.seqlen,
            seed=plan.calibration.seed,
            exclude=recipe.exclude,
        )
        result["prune"] = yield from relay(
            prune(source, config, target, force=True, options=options, measure_perplexity=False, cancel=cancel), "compress"
        )
        source = str(target)
    if spec.quantize is not None:
        settings = QuantizeSettings(block_size=spec.quantize.block_size)
        result["quantize"] = yield from relay(
            quantize(source, spec.quantize.scheme, out, force=True, options=options, settings=settings, measure_perplexity=False, cancel=cancel),
            "compress",
        )
    return result


def _probe_records(
    plan: Plan, model: Any, name: str, suite_spec: str, cancel: threading.Event | None, *, noise: bool = False
) -> Job[StepRecord]:
    """A probe step; `noise`: the baseline's second scoring with other seeds, stored beside it."""
    from audit.probes.job import ProbeSettings, run_probe
    from audit.probes.suites import load_suite

    started = time.time()
    suite = load_suite(suite_spec, categories=plan.probes.categories or None, limit=plan.probes.limit)
    settings = ProbeSettings(
        mode=plan.probes.mode,
        seeds=plan.probes.noise_seeds if noise else plan.probes.seeds,
        temperature=plan.probes.temperature,
        max_new_tokens=plan.probes.max_new_tokens,
    )
    run, resources = yield from _sampled(run_probe(model, suite, settings, cancel, model_info={"variant": name}))
    if not run.complete:
        raise Cancelled()
    texts = {item.item_id: item for item in suite.items}
    items = []
    for result in run.results:
        record = result.to_dict()
        item = texts[result.item_id]
        record.update(context=item.context, question=item.question, options=list(item.options))
        items.append(record)
    summary = run.to_dict()
    metrics = list(_metric_rows(summary["metrics"]))
    kind = (NOISE_PREFIX if noise else PROBE_PREFIX) + suite_spec
    return StepRecord(name, kind, started, summary, resources, items, kind if noise else suite_spec, metrics)


def _metric_rows(summary: dict[str, Any]) -> Iterator[tuple]:
    """(category, name, value, low, high, n) for every estimate in a probe summary."""
    groups = [("overall", summary.get("overall") or {})] + sorted((summary.get("categories") or {}).items())
    if summary.get("category_mean"):
        groups.append(("category_mean", summary["category_mean"]))
    for category, metrics in groups:
        for name, value in metrics.items():
            if isinstance(value, dict) and "value" in value:
                low, high = (value.get("ci95") or [None, None])[:2]
                yield (category, name, value["value"], low, high, value.get("n"))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                yield (category, name, float(value), None, None, None)


def _die_with_parent(parent_pid: int) -> None:
    """Worker-process initializer: ask Linux to kill this process when its parent dies, so a
    run killed with SIGKILL leaves no orphan still profiling or pruning."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to ask for
        pass
    if os.getppid() != parent_pid:  # the parent died while this process was starting
        os._exit(1)
    # The parent handles Ctrl-C for the whole run; a worker just stops when told.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _process_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """Spawned worker processes that die with the run: on any exit from the block other than a
    normal one (failure, cancel, Ctrl-C, SIGTERM) they are terminated, not waited for."""
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    )
    try:
        yield pool
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _profile_in_fresh_process(spec: str, settings: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    """Runs in a spawned process, so memory figures are this model's alone."""
    from hardware.profile import ProfileSettings, profile_model

    return drive(profile_model(spec, ProfileSettings(**settings), LoadOptions(**load))).to_dict()


def profile_step(plan: Plan, name: str, spec: str, options: LoadOptions, cancel: threading.Event | None) -> Job[StepRecord]:
    started = time.time()
    settings = {
        "prompt_tokens": plan.profile.prompt_tokens,
        "new_tokens": plan.profile.new_tokens,
        "runs": plan.profile.runs,
        "warmup_runs": plan.profile.warmup,
    }
    load = asdict(replace(options, threads=plan.profile.threads or options.threads))
    yield Progress(PROFILE, 0, 1, f"profiling {name} in a fresh process")
    with _process_pool(1) as pool:
        future = pool.submit(_profile_in_fresh_process, spec, settings, load)
        while True:
            try:
                result = future.result(timeout=0.5)
                break
            except concurrent.futures.TimeoutError:
                check_cancel(cancel)
    yield Progress(PROFILE, 1, 1, f"profiled {name}")
    return StepRecord(name, PROFILE, started, result, result.get("resources", {}))


def model_spec_for(plan: Plan, name: str, work_dir: Path) -> str:
    if name == BASELINE:
        return plan.model
    spec = plan.variant(name)
    return spec.path or str(variant_folder(work_dir, name))


def execute_variant(
    plan: Plan,
    name: str,
    work_dir: Path,
    done: set[str],
    record: Callable[[StepRecord], None],
    options: LoadOptions,
    cancel: threading.Event | None = None,
    *,
    skip_profile: bool = False,
    model: Any = None,
) -> Job[None]:
    """Run the steps of one variant that are not in `done`, handing each finished one to
    `record` at once (the store commits it before the next step starts).

    `model`, when given, is this variant already loaded: its perplexity and probe steps use it
    instead of loading the model again, and it is left open for the caller."""
    from audit.perplexity import perplexity, text_source

    kinds = [k for k in steps_for(plan, name) if k not in done and not (skip_profile and k == PROFILE)]
    spec = model_spec_for(plan, name, work_dir)
    folder_missing = name != BASELINE and plan.variant(name).path is None and not Path(spec).exists()
    if COMPRESS not in kinds and COMPRESS in steps_for(plan, name) and folder_missing:
        # The step was stored but its folder is gone (work dir cleaned): compress again.
        kinds.insert(0, COMPRESS)
    if not kinds:
        return
    if COMPRESS in kinds:
        check_cancel(cancel)
        started = time.time()
        yield Progress(COMPRESS, 0, None, f"{name}: compressing")
        result, resources = yield from _sampled(compress_variant(plan, plan.variant(name), Path(spec), options, cancel))
        record(StepRecord(name, COMPRESS, started, result, resources))
    model_steps = [k for k in kinds if k == PERPLEXITY or k.startswith((PROBE_PREFIX, NOISE_PREFIX))]
    if model_steps:
        loaded = model if model is not None else (yield from relay(load_model(spec, options, cancel), "load"))
        try:
            for kind in model_steps:
                check_cancel(cancel)
                started = time.time()
                if kind == PERPLEXITY:
                    text, source = text_source(Path(plan.perplexity.text) if plan.perplexity.text else None)
                    value, resources = yield from _sampled(perplexity(loaded, text, source=source, cancel=cancel))
                    record(StepRecord(name, PERPLEXITY, started, value.to_dict(), resources))
                elif kind.startswith(NOISE_PREFIX):
                    record((yield from _probe_records(plan, loaded, name, kind[len(NOISE_PREFIX):], cancel, noise=True)))
                else:
                    record((yield from _probe_records(plan, loaded, name, kind[len(PROBE_PREFIX):], cancel)))
        finally:
            if model is None:
                loaded.close()
    if PROFILE in kinds:
        check_cancel(cancel)
        record((yield from profile_step(plan, name, spec, options, cancel)))


# -- running a plan ---------------------------------------------------------------------------
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
    store = ResultsStore(options.store or default_store_path())
    if options.resume is not None:
        record = store.run(options.resume)
        if record.status == "finished":
            raise UserError(f"run {record.id} already finished; nothing to resume")
        stored = parse_plan(record.plan_text, Path(record.plan_path) if record.plan_path else None, stored=True)
        store.mark_running(record.id)
        work_dir = Path(record.work_dir) if record.work_dir else _default_work_dir(store, record.id)
        return store, record.id, stored, work_dir
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
    work_dir = Path(options.work_dir) / f"run-{run_id}" if options.work_dir else _default_work_dir(store, run_id)
    store.set_work_dir(run_id, str(work_dir))
    return store, run_id, plan, work_dir


def _default_work_dir(store: ResultsStore, run_id: int) -> Path:
    return store.path.parent / "runs" / f"run-{run_id}"


def run_plan(plan: Plan | None, options: RunOptions = RunOptions(), cancel: threading.Event | None = None) -> Job[RunOutcome]:
    """Run (or resume) a plan: every variant's steps, each committed as it finishes; then the
    comparison against the baseline, the gate and the report data."""
    from audit.results import build_report, evaluate_run_gate

    store, run_id, plan, work_dir = start_or_resume(plan, options)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        names = variant_names(plan)
        total = sum(len(steps_for(plan, n)) for n in names)

        def finished() -> int:
            return sum(1 for n in names for k in steps_for(plan, n) if store.step(run_id, n, k) is not None)

        yield Progress("run", finished(), total, f"run {run_id}: {finished()}/{total} steps done", {"run_id": run_id})
        if options.ray_address:
            yield from _run_on_ray(plan, run_id, store, work_dir, options, cancel, total, finished)
        elif options.workers > 1:
            yield from _run_in_processes(plan, run_id, store, work_dir, options, cancel, total, finished)
        else:
            for name in names:
                done = {k for k in steps_for(plan, name) if store.step(run_id, name, k) is not None}
                job = execute_variant(plan, name, work_dir, done, lambda r: r.commit(store, run_id), options.load, cancel)
                for event in job:
                    yield replace(event, message=f"{name}: {event.message}" if not event.message.startswith(name) else event.message)
                yield Progress("run", finished(), total, f"{name} done", {"run_id": run_id})
        gate = evaluate_run_gate(store, run_id, plan)
        report = build_report(store, run_id, plan, gate)
        exit_code = 0 if gate.passed else 1
        store.finish_run(run_id, "finished", gate.to_dict(), exit_code)
        report["run"]["status"] = "finished"
        return RunOutcome(run_id, store.path, "finished", exit_code, gate.to_dict(), report)
    except (Cancelled, KeyboardInterrupt, SystemExit):
        store.finish_run(run_id, "interrupted", None, 130)
        raise
    except BaseException as exc:
        store.finish_run(run_id, "failed", {"error": str(exc)}, 2)
        raise
    finally:
        store.close()


# -- runs driven one step at a time ----------------------------------------------------------------
def stored_plan(store: ResultsStore, run_id: int) -> Plan:
    """The plan a stored run follows (as revised by `add_variant` and `update_plan`)."""
    record = store.run(run_id)
    return parse_plan(record.plan_text, Path(record.plan_path) if record.plan_path else None, check_model=False, stored=True)


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
) -> Job[list[str]]:
    """Run the given steps of one variant of a stored run, again when they are already stored,
    committing each as it finishes (a cancelled step stores nothing; the finished ones stay).
    `model` is the variant already loaded, used by its perplexity and probe steps.
    Returns the kinds stored, in order."""
    with ResultsStore(store_path or default_store_path()) as store:
        plan = stored_plan(store, run_id)
        if name not in variant_names(plan):
            raise UserError(f"run {run_id} has no variant {name!r}; its variants: {', '.join(variant_names(plan))}")
        planned = steps_for(plan, name)
        for kind in kinds:
            if kind not in planned:
                raise UserError(f"{name} has no step {kind!r} in run {run_id}; its steps: {', '.join(planned)}")
        record = store.run(run_id)
        work_dir = Path(record.work_dir) if record.work_dir else _default_work_dir(store, run_id)
        work_dir.mkdir(parents=True, exist_ok=True)
        stored: list[str] = []

        def commit(step: StepRecord) -> None:
            step.commit(store, run_id)
            stored.append(step.kind)

        done = set(planned) - set(kinds)
        yield from execute_variant(plan, name, work_dir, done, commit, options, cancel, model=model)
    return stored


def close_run(store_path: Path | None, run_id: int) -> str:
    """Set the status of a run driven step by step: "finished", with its gate, when every planned
    step is stored, else "interrupted", which `edge-audit run --resume` completes. Returns it."""
    from audit.results import evaluate_run_gate

    with ResultsStore(store_path or default_store_path()) as store:
        plan = stored_plan(store, run_id)
        missing = [(n, k) for n in variant_names(plan) for k in steps_for(plan, n) if store.step(run_id, n, k) is None]
        if missing:
            store.finish_run(run_id, "interrupted", None, 130)
            return "interrupted"
        gate = evaluate_run_gate(store, run_id, plan)
        store.finish_run(run_id, "finished", gate.to_dict(), 0 if gate.passed else 1)
        return "finished"


# -- parallel variants ----------------------------------------------------------------------------
def _variant_in_process(
    store_path: str, run_id: int, plan_text: str, plan_path: str | None, name: str, work_dir: str, load: dict[str, Any], events: Any, threads: int
) -> None:
    """A worker process: run one variant's steps (profile excepted), committing each to the store."""
    import torch

    torch.set_num_threads(threads)
    plan = parse_plan(plan_text, Path(plan_path) if plan_path else None, check_model=False, stored=True)
    with ResultsStore(store_path) as store:
        done = {k for k in steps_for(plan, name) if store.step(run_id, name, k) is not None}
        job = execute_variant(plan, name, Path(work_dir), done, lambda r: r.commit(store, run_id), LoadOptions(**load), skip_profile=True)
        for event in job:
            events.put((name, event.stage, event.done, event.total, event.message))


def _run_in_processes(
    plan: Plan, run_id: int, store: ResultsStore, work_dir: Path, options: RunOptions, cancel: threading.Event | None, total: int, finished: Callable[[], int]
) -> Job[None]:
    """Variants in parallel processes; profiles afterwards one at a time, since latency
    measured while other variants compete for the cores would mean nothing."""
    names = variant_names(plan)
    threads = max(1, (os.cpu_count() or 1) // options.workers)
    manager = multiprocessing.get_context("spawn").Manager()
    events = manager.Queue()
    load = asdict(options.load)
    try:
        with _process_pool(options.workers) as pool:
            futures = {
                pool.submit(_variant_in_process, str(store.path), run_id, plan.text, plan.path, name, str(work_dir), load, events, threads): name
                for name in names
            }
            pending = set(futures)
            while pending:
                check_cancel(cancel)
                done, pending = concurrent.futures.wait(pending, timeout=0.5)
                yield from _drain(events)
                for future in done:
                    future.result()  # a worker's failure fails the run
                    yield Progress("run", finished(), total, f"{futures[future]} done (profile pending)", {"run_id": run_id})
            yield from _drain(events)
    finally:
        manager.shutdown()
    for name in names:
        if PROFILE in steps_for(plan, name) and store.step(run_id, name, PROFILE) is None:
            record = yield from profile_step(plan, name, model_spec_for(plan, name, work_dir), options.load, cancel)
            record.commit(store, run_id)
            yield Progress("run", finished(), total, f"{name} profiled", {"run_id": run_id})


def _drain(events: Any) -> Iterator[Progress]:
    while True:
        try:
            name, stage, done, total, message = events.get_nowait()
        except queue.Empty:
            return
        yield Progress(stage, done, total, f"{name}: {message}")


def _variant_on_ray(plan_text: str, plan_path: str | None, name: str, done: list[str], load: dict[str, Any]) -> list[dict[str, Any]]:
    """A Ray task: run one variant in a scratch folder on whichever node it lands, and return
    its step records for the driver to commit (a remote node cannot reach the driver's store)."""
    plan = parse_plan(plan_text, Path(plan_path) if plan_path else None, check_model=False, stored=True)
    records: list[StepRecord] = []
    work_dir = Path(tempfile.mkdtemp(prefix="edge-audit-ray-"))
    drive(execute_variant(plan, name, work_dir, set(done), records.append, LoadOptions(**load)))
    return [asdict(r) for r in records]


def _run_on_ray(
    plan: Plan, run_id: int, store: ResultsStore, work_dir: Path, options: RunOptions, cancel: threading.Event | None, total: int, finished: Callable[[], int]
) -> Job[None]:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'edge-audit[ray]'") from None
    address = None if options.ray_address == "local" else options.ray_address
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # connection refused, bad address, version mismatch
            raise UserError(f"cannot connect to the Ray cluster at {options.ray_address}: {exc}") from None
    try:
        remote = ray.remote(_variant_on_ray)
        load = asdict(options.load)
        refs = {}
        for name in variant_names(plan):
            done = [k for k in steps_for(plan, name) if store.step(run_id, name, k) is not None]
            if len(done) < len(steps_for(plan, name)):
                refs[remote.remote(plan.text, plan.path, name, done, load)] = name
        pending = list(refs)
        while pending:
            check_cancel(cancel)
            ready, pending = ray.wait(pending, timeout=0.5)
            for ref in ready:
                for data in ray.get(ref):
                    data["metrics"] = [tuple(m) for m in data["metrics"]]
                    StepRecord(**data).commit(store, run_id)
                yield Progress("run", finished(), total, f"{refs[ref]} done on Ray", {"run_id": run_id})
    finally:
        if started_here:
            ray.shutdown()
