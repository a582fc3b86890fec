"""Executing the steps of one variant: compress, perplexity, probes and the profile, each
handed on as a `StepRecord` the moment it finishes."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from audit.errors import Cancelled
from audit.models import LoadOptions, load_model
from audit.plans import Plan, VariantSpec
from audit.progress import Job, Progress, check_cancel, drive, relay
from audit.run.pool import process_pool
from audit.run.steps import (
    BASELINE,
    COMPRESS,
    FINGERPRINT,
    NOISE_PREFIX,
    PERPLEXITY,
    PROBE_PREFIX,
    PROFILE,
    StepRecord,
    model_spec_for,
    steps_for,
)


def _sampled(job: Job[Any]) -> Job[tuple[Any, dict[str, Any]]]:
    from hardware.sampler import sample_job

    outcome = yield from sample_job(job)
    return outcome.value, outcome.resources


# In a run's folder: dense input norms, gathered once for all the sparsities of a sweep.
STATISTICS_FOLDER = ".calibration"


def compress_variant(plan: Plan, spec: VariantSpec, out: Path, options: LoadOptions, cancel: threading.Event | None) -> Job[dict[str, Any]]:
    """Prune and/or quantize the plan's model into `out` (replacing what a killed run left)."""
    from audit.compress.prune import prune
    from audit.compress.quantize import QuantizeSettings, quantize

    source = plan.model
    result: dict[str, Any] = {"folder": str(out)}
    if spec.prune is not None:
        target = out.with_name(out.name + ".pruned") if spec.quantize else out
        result["prune"] = yield from relay(
            prune(
                source, spec.prune, target, calibration=plan.calibration, force=True, options=options,
                measure_perplexity=False, cancel=cancel, shared_statistics=out.parent / STATISTICS_FOLDER,
            ),
            "compress",
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
    probes = plan.probes
    suite = load_suite(suite_spec, **probes.suite_options())
    settings = ProbeSettings(
        mode=probes.mode,
        seeds=probes.noise_seeds if noise else probes.seeds,
        temperature=probes.temperature,
        max_new_tokens=probes.max_new_tokens,
        prompt=probes.prompt,
        parser=probes.parser,
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


def fingerprint_step(name: str, folder: Path, cancel: threading.Event | None) -> Job[StepRecord]:
    """The fingerprint of the folder a variant's measurements are made on."""
    from audit.fingerprint import fingerprint_folder

    started = time.time()
    fingerprint = yield from fingerprint_folder(folder, cancel)
    return StepRecord(name, FINGERPRINT, started, dict(fingerprint.to_dict(), folder=str(folder)))


def _profile_in_fresh_process(spec: str, settings: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    """Runs in a spawned process, so memory figures are this model's alone."""
    from audit.profile import ProfileSettings, profile_model

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
    with process_pool(1) as pool:
        future = pool.submit(_profile_in_fresh_process, spec, settings, load)
        while True:
            try:
                result = future.result(timeout=0.5)
                break
            except concurrent.futures.TimeoutError:
                check_cancel(cancel)
    yield Progress(PROFILE, 1, 1, f"profiled {name}")
    return StepRecord(name, PROFILE, started, result, result.get("resources", {}))


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
            folder = loaded.facts().path
            # A folder compressed again is a new model: fingerprint it again.
            if (FINGERPRINT not in done or COMPRESS in kinds) and folder and Path(folder).is_dir():
                record((yield from fingerprint_step(name, Path(folder), cancel)))
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
