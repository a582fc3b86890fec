"""Executing the steps of one variant: compress, perplexity, probes and the profile, each
handed on as a `StepRecord` the moment it finishes."""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

from audit.errors import Cancelled, UserError
from audit.models import LoadOptions, load_model
from audit.plans import Plan, VariantSpec
from audit.progress import Job, Progress, StepCounter, check_cancel, drive, relay
from audit.run.pool import process_pool
from audit.run.steps import (
    BASELINE,
    BaselineItems,
    COMPRESS,
    FINGERPRINT,
    FOLDER,
    NOISE_PREFIX,
    PERPLEXITY,
    PROBE_PREFIX,
    PROFILE,
    StepRecord,
    model_spec_for,
    pruned_folder,
    steps_for,
    writing_variant_folder,
)
from audit.threads import thread_count_problem


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
        target = pruned_folder(out) if spec.quantize else out
        result["prune"] = yield from relay(
            prune(
                source, spec.prune, target, calibration=plan.calibration, force=True, options=options,
                measure_perplexity=False, cancel=cancel, shared_statistics=out.parent / STATISTICS_FOLDER, out_held=True,
            ),
            "compress",
        )
        source = str(target)
    if spec.quantize is not None:
        settings = QuantizeSettings(block_size=spec.quantize.block_size)
        result["quantize"] = yield from relay(
            quantize(
                source, spec.quantize.scheme, out, force=True, options=options, settings=settings, measure_perplexity=False,
                cancel=cancel, out_held=True,
            ),
            "compress",
        )
    return result


def _probe_records(
    plan: Plan, model: Any, name: str, suite_spec: str, cancel: threading.Event | None, *, noise: bool = False,
    baseline: BaselineItems | None = None,
) -> Job[StepRecord]:
    """A probe step; `noise`: the baseline's second scoring with other seeds, stored beside it.
    With the plan's probes sequential, a variant's items are scored in the drawn order until its
    verdicts on them are settled (`_sequential_probe`), against `baseline`'s items."""
    from audit.probes.items import QA
    from audit.probes.job import ProbeSettings, run_probe
    from audit.probes.suites import load_suite
    from audit.sequential import judges_anything, suite_gate

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
    gate = suite_gate(plan.gate, suite_spec, probes.suites[0])
    drawn: dict[str, int] = {}
    if probes.sequential and name != BASELINE and not noise and judges_anything(gate, suite.kind == QA):
        run, sequential, resources = yield from _sequential_probe(plan, model, name, suite, suite_spec, settings, gate, baseline, cancel)
        drawn = {r.item_id: i for i, r in enumerate(run.results)}
    else:
        sequential = None
        run, resources = yield from _sampled(run_probe(model, suite, settings, cancel, model_info={"variant": name}))
    if not run.complete:
        raise Cancelled()
    texts = {item.item_id: item for item in suite.items}
    items = []
    for result in run.results:
        record = result.to_dict()
        item = texts[result.item_id]
        record.update(context=item.context, question=item.question, options=list(item.options))
        if drawn:
            record["drawn"] = drawn[result.item_id]  # its place in the order the judge took the items
        items.append(record)
    summary = run.to_dict()
    if sequential is not None:
        summary["sequential"] = sequential
    metrics = list(_metric_rows(summary["metrics"]))
    kind = (NOISE_PREFIX if noise else PROBE_PREFIX) + suite_spec
    return StepRecord(name, kind, started, summary, resources, items, kind if noise else suite_spec, metrics)


def _sequential_probe(plan: Plan, model: Any, name: str, suite: Any, suite_spec: str, settings: Any, gate: Any,
                      baseline: BaselineItems | None, cancel: threading.Event | None) -> Job[tuple[Any, dict[str, Any], dict[str, Any]]]:
    """A variant's probe of one suite scored sequentially: (its items as a probe run, what the
    report and a replay of its judge need, the resources it used)."""
    from collections import Counter

    from audit.probes.compare import setting_differences
    from audit.probes.job import ProbeRun
    from audit.sequential import DEFAULT_BATCH_ITEMS, FUTILE_CHANCE, gate_facts, items_digest, probe_sequentially

    stored = (yield from baseline.probe(suite_spec, cancel)) if baseline is not None else None
    if stored is None or not stored.results:
        raise UserError(f"{name}: a sequential probe of {suite_spec} compares with the baseline's items: probe the baseline on it first")
    norm = settings.norm or suite.default_norm
    differences = setting_differences(stored.settings, {"suite": suite.name, "suite_spec": suite.spec, **settings.to_dict(norm)}, ignore=("batch_items",))
    missing = len({item.item_id for item in suite.items} - stored.ids)
    if missing:
        differences.append(f"{missing} of this probe's items are not in it")
    if differences:
        # Its items would be paired with answers it cannot be compared with, and it would stop on them.
        raise UserError(f"{name}: the baseline's probe of {suite_spec} was not scored like this one ({'; '.join(differences)}): "
                        f"probe the baseline again first")
    base = stored.results
    probes = plan.probes
    futility = FUTILE_CHANCE if probes.futility is None else probes.futility
    job = probe_sequentially(model, suite, gate, settings, variant=name, baseline=base, seed=probes.order_seed or 0,
                             batch_items=probes.sequential_batch or DEFAULT_BATCH_ITEMS, futility=futility, cancel=cancel)
    seq, resources = yield from _sampled(job)
    run = ProbeRun(suite, settings, norm, seq.results, not seq.cancelled, seq.elapsed_s, {"variant": name})
    data = seq.to_dict()
    record = {key: data[key] for key in ("seed", "batch_items", "futility", "items_scored", "items_total", "fraction_scored", "stopped",
                                         "narrowed_at", "scored_ahead_unused", "looks", "items_per_category", "gate")}
    record["categories_total"] = dict(sorted(Counter(item.category for item in suite.items).items()))
    # What reading its figures again needs without replaying every look, while the plan's gate
    # and the baseline's items are the ones it stopped by (`audit.sequential.resume`).
    record.update(tightest=seq.tightest, gate_settings=gate_facts(gate), baseline_digest=items_digest(base))
    return run, record, resources


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
    """The fingerprint of the folder a variant's measurements are made on, with its size on
    disk (as the profile measures it), so a run that profiles nothing still has the sizes the
    sweep matches quantized variants to pruned ones by."""
    from audit.fingerprint import fingerprint_folder

    started = time.time()
    fingerprint = yield from fingerprint_folder(folder, cancel)
    return StepRecord(name, FINGERPRINT, started, dict(fingerprint.to_dict(), folder=str(folder), size_on_disk_mb=size_on_disk_mb(folder)))


def size_on_disk_mb(folder: Path) -> float:
    """A model folder's size on disk in MB, as the profile's facts give it (`model_size_bytes`:
    model folders nested inside it not counted)."""
    from audit.models.interface import MB
    from audit.models.loader import model_size_bytes

    return round(model_size_bytes(folder) / MB, 2)


def compressed_copy(folder: Path) -> Path | None:
    """The compressed sparse copy of a model folder: the folder itself when its weights are
    stored so, else the `compressed/` folder that pruning writes inside the dense one; None
    when it has neither."""
    from audit.compress.prune import COMPRESSED_SUBFOLDER
    from audit.models.meta import SPARSE_FORMAT, read_meta

    for candidate in (folder, folder / COMPRESSED_SUBFOLDER):
        storage = read_meta(candidate).get("storage") or {}
        if storage.get("format") == SPARSE_FORMAT and (candidate / str(storage.get("file") or "")).is_file():
            return candidate
    return None


def folder_facts(folder: Path, weight_sparsity: float | None) -> dict[str, Any]:
    """What a variant given as a folder is, since no compress step says it: the share of exact
    zeros measured in its decoder's linear weights, the compression its folder has on record,
    and its size on disk with its compressed sparse copy's."""
    from audit.models.meta import compression_label, read_meta

    described = compression_label(read_meta(folder))
    copy = compressed_copy(folder)
    return {
        "folder": str(folder),
        "weight_sparsity": None if weight_sparsity is None else round(weight_sparsity, 6),
        "compression": described[0] if described else None,
        "size_on_disk_mb": size_on_disk_mb(folder),
        "compressed_folder": None if copy is None else str(copy),
        "size_on_disk_compressed_mb": None if copy is None else size_on_disk_mb(copy),
    }


def _profile_in_fresh_process(spec: str, settings: dict[str, Any], load: dict[str, Any], events: Any) -> dict[str, Any]:
    """Runs in a spawned process, so memory figures are this model's alone; its progress events
    go back to the run through `events` (the sending end of a pipe)."""
    from audit.profile import ProfileSettings, profile_model

    return drive(profile_model(spec, ProfileSettings(**settings), LoadOptions(**load)), events.send).to_dict()


def plan_threads(plan: Plan) -> int | None:
    """The plan's profile.threads, refused in one line where this device cannot take that many."""
    threads = plan.profile.threads
    problem = None if threads is None else thread_count_problem(threads)
    if problem is not None:
        raise UserError(f"the plan's profile.threads {problem}")
    return threads


def profile_step(plan: Plan, name: str, spec: str, options: LoadOptions, cancel: threading.Event | None) -> Job[StepRecord]:
    started = time.time()
    settings = {
        "prompt_tokens": plan.profile.prompt_tokens,
        "new_tokens": plan.profile.new_tokens,
        "runs": plan.profile.runs,
        "warmup_runs": plan.profile.warmup,
    }
    load = asdict(replace(options, threads=plan_threads(plan) or options.threads))
    yield Progress(PROFILE, 0, None, f"profiling {name}: starting a fresh process")
    receiving, sending = multiprocessing.get_context("spawn").Pipe(duplex=False)
    try:
        with process_pool(1) as pool:
            future = pool.submit(_profile_in_fresh_process, spec, settings, load, sending)
            while not future.done():
                check_cancel(cancel)
                if receiving.poll(0.5):
                    yield _profile_event(name, receiving.recv())
            while receiving.poll():  # the last events, sent just before the process returned
                yield _profile_event(name, receiving.recv())
            result = future.result()
    finally:
        receiving.close()
    # Only after a normal exit: the pool has then shut down. On a failure or a cancel it is left
    # without waiting, and its feeder thread may still be pickling the call that carries
    # `sending`; closing it under that thread would fail it. It closes with its last reference.
    sending.close()
    yield Progress(PROFILE, 1, 1, f"profiled {name}")
    return StepRecord(name, PROFILE, started, result, result.get("resources", {}))


def _profile_event(name: str, event: Progress) -> Progress:
    """An event of the profiling process, as the run says it ("profiling baseline: run 3 of 10")."""
    return Progress(event.stage, event.done, event.total, f"profiling {name}: {event.message}")


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
    steps: StepCounter | None = None,
    baseline: BaselineItems | None = None,
    fingerprint: dict[str, Any] | None = None,
    only: Collection[str] | None = None,
    source_fingerprint: dict[str, Any] | None = None,
) -> Job[None]:
    """Run the steps of one variant that are not in `done` (the steps stored), handing each
    finished one to `record` at once (the store commits it before the next step starts); with
    `only`, those of its steps instead, stored or not. `baseline` gives the baseline's stored
    items of a suite, which a plan's sequential probes compare with. `fingerprint` is the one
    stored for the weights the variant's stored steps measured (`stored_fingerprint`): the steps
    left are measured on the same weights or not at all.

    `model`, when given, is this variant already loaded: its perplexity and probe steps use it
    instead of loading the model again, and it is left open for the caller. `steps` numbers the
    steps when they are part of a longer job (by default they are numbered on their own).
    `source_fingerprint`, when given, is the one stored for the baseline: a variant is compressed
    from the plan's model only when its weights are still those (`check_compress_source`)."""
    planned = steps_for(plan, name)

    def wanted(kind: str) -> bool:
        return (only is None or kind in only) and not (skip_profile and kind == PROFILE)

    kinds = [k for k in planned if wanted(k) and (only is not None or k not in done)]
    spec = model_spec_for(plan, name, work_dir)
    compressed = COMPRESS in planned
    folder_missing = name != BASELINE and plan.variant(name).path is None and not Path(spec).exists()
    if COMPRESS not in kinds and compressed and folder_missing:
        # The step was stored but its folder is gone (work dir cleaned): compress again.
        kinds.insert(0, COMPRESS)
    if not kinds:
        return
    steps = steps or StepCounter([(name, kind) for kind in kinds])
    checked: Path | None = None  # the folder whose weights were fingerprinted here
    if COMPRESS in kinds:
        check_cancel(cancel)
        if source_fingerprint is not None:
            yield from steps.lead_in(name, COMPRESS, check_compress_source(plan, name, source_fingerprint, options, cancel))
        yield from steps.run(name, COMPRESS, _compress_step(plan, name, spec, options, cancel), record)
        # The stored fingerprint is of the weights compressed before, which are gone. When
        # compressing again gave the same weights, it and the steps stored stand. When it gave
        # other weights, the new fingerprint replaces it, and the steps stored are measured again
        # on these weights (those this call runs; the others are left to a later one): no step
        # can ever be measured on the old ones again, so refusing would leave a run that can
        # never finish, and keeping them would put figures of two models under one name. They
        # are marked not done before the new fingerprint is stored, so a run stopped while
        # measuring them again still does them.
        if fingerprint is not None:
            stale = [k for k in planned if k != COMPRESS and k in done]
            following = next((k for k in kinds + stale if k != COMPRESS and wanted(k)), COMPRESS)
            taken = yield from steps.lead_in(name, following, fingerprint_step(name, Path(spec), cancel))
            checked = Path(spec)
            if _other_weights(fingerprint, taken.result):
                replaced = f"measured on weights compressed before, not the ones {name} was compressed to again"
                for kind in stale:
                    record(StepRecord(name, kind, time.time(), {}, error=replaced))
                record(taken)
                fingerprint = taken.result
                kinds = [k for k in planned if k in kinds or (k in stale and wanted(k))]
    model_steps = [k for k in kinds if k == PERPLEXITY or k.startswith((PROBE_PREFIX, NOISE_PREFIX))]
    if model_steps:
        # Loading and fingerprinting are done for the first of them, and timed with it.
        first = model_steps[0]
        loaded = model if model is not None else (yield from steps.lead_in(name, first, relay(load_model(spec, options, cancel), "load")))
        try:
            facts = loaded.facts()
            folder = facts.path
            if folder and Path(folder).is_dir() and not _same_folder(checked, Path(folder)):
                taken = yield from steps.lead_in(name, first, same_weights(name, Path(folder), fingerprint, compressed, cancel))
                if fingerprint is None:
                    record(taken)
            if FOLDER not in done and name != BASELINE and plan.variant(name).path and folder and Path(folder).is_dir():
                record(StepRecord(name, FOLDER, time.time(), folder_facts(Path(folder), facts.weight_sparsity)))
            for kind in model_steps:
                check_cancel(cancel)
                yield from steps.run(name, kind, _measure_step(plan, loaded, name, kind, cancel, baseline), record)
        finally:
            if model is None:
                loaded.close()
    elif PROFILE in kinds:
        yield from steps.lead_in(name, PROFILE, check_before_profile(plan, name, spec, fingerprint, options, cancel, checked=checked))
    if PROFILE in kinds:
        check_cancel(cancel)
        yield from steps.run(name, PROFILE, profile_step(plan, name, spec, options, cancel), record)


def check_before_profile(plan: Plan, name: str, spec: str, fingerprint: dict[str, Any] | None, options: LoadOptions,
                         cancel: threading.Event | None, *, checked: Path | None = None) -> Job[None]:
    """Before a profile whose model no step of the same call loaded (its variant's other steps
    stored earlier, or by a worker process): the weights it is about to measure are the ones
    its stored steps measured (`fingerprint`), or it is refused in one line naming both digests
    (`same_weights`). A model given as an alias, a GGUF file or a hub id is measured on the
    folder loading makes of it (`model_folder`), which is read. A folder `checked`,
    fingerprinted moments ago in the same call, is not read again. A run in one process and
    the profiles its workers leave to the run both check here, so that they refuse the same
    folders."""
    if fingerprint is None:
        return
    folder = yield from _measured_folder(spec, options, cancel)
    if _same_folder(checked, folder):
        return
    yield from same_weights(name, folder, fingerprint, COMPRESS in steps_for(plan, name), cancel)


def check_compress_source(plan: Plan, name: str, stored: dict[str, Any], options: LoadOptions,
                          cancel: threading.Event | None) -> Job[None]:
    """Before variant `name` is compressed from the plan's model in a call that did not measure
    the baseline: the model's weights are the ones the baseline's stored steps measured
    (`stored`), or the compression is refused in one line naming both digests. Else the variant
    would be made from other weights than the baseline it is compared with."""
    folder = yield from _measured_folder(plan.model, options, cancel)
    taken = yield from fingerprint_step(name, folder, cancel)
    if _other_weights(stored, taken.result):
        raise UserError(
            f"{name}: cannot compress it from {folder}: the weights there have changed since this run measured the baseline on them "
            f"(fingerprint {stored['digest'][:12]} then, {taken.result['digest'][:12]} now), so it would be compared with a baseline "
            "of other weights: put back the weights the baseline was measured on, or start a new run"
        )


def _measured_folder(spec: str, options: LoadOptions, cancel: threading.Event | None) -> Job[Path]:
    """The folder whose weights a model given as `spec` is measured on: the folder itself, or
    for an alias, a GGUF file or a hub id the one loading makes of it (`model_folder`)."""
    from audit.models.loader import model_folder

    folder = Path(spec)
    if folder.is_dir():
        return folder
    return (yield from relay(model_folder(spec, options, cancel), "load"))


def same_weights(name: str, folder: Path, stored: dict[str, Any] | None, compressed: bool,
                 cancel: threading.Event | None) -> Job[StepRecord]:
    """The fingerprint of the folder a variant's steps are about to measure, refused in one line
    when the variant's stored steps were measured on other weights (the folder, or the baseline's
    model file, was changed between them): the run's figures would mix two models under one
    name, and its report and record would vouch for weights that were not measured.
    `compressed`: the variant is compressed by the run, which can compress it again."""
    taken = yield from fingerprint_step(name, folder, cancel)
    if _other_weights(stored, taken.result):
        assert stored is not None
        remedy = f"remove {folder} to have it compressed again" if compressed else "put back the weights they were measured on"
        raise UserError(
            f"{name}: its weights in {folder} have changed since this run's earlier steps measured them "
            f"(fingerprint {stored['digest'][:12]} then, {taken.result['digest'][:12]} now), so its steps left would be measured "
            f"on other weights: {remedy}, or start a new run"
        )
    return taken


def _other_weights(stored: dict[str, Any] | None, taken: dict[str, Any]) -> bool:
    """Whether the fingerprint taken now is of other weights than the stored one. A stored
    fingerprint of an earlier format covers less than one taken now, so its digest cannot be
    compared; it is left as it is (a record of such a run is refused with what to do)."""
    return stored is not None and stored.get("format") == taken.get("format") and stored.get("digest") != taken.get("digest")


def _same_folder(checked: Path | None, folder: Path) -> bool:
    return checked is not None and checked.resolve() == folder.resolve()


def _compress_step(plan: Plan, name: str, spec: str, options: LoadOptions, cancel: threading.Event | None) -> Job[StepRecord]:
    started = time.time()
    yield Progress(COMPRESS, 0, None, f"{name}: compressing")
    with (yield from writing_variant_folder(Path(spec), cancel)):
        result, resources = yield from _sampled(compress_variant(plan, plan.variant(name), Path(spec), options, cancel))
    return StepRecord(name, COMPRESS, started, result, resources)


def _measure_step(plan: Plan, model: Any, name: str, kind: str, cancel: threading.Event | None,
                  baseline: BaselineItems | None = None) -> Job[StepRecord]:
    """A perplexity, probe or noise-floor step on the loaded model."""
    from audit.perplexity import perplexity, text_source

    if kind == PERPLEXITY:
        started = time.time()
        text, source = text_source(Path(plan.perplexity.text) if plan.perplexity.text else None)
        value, resources = yield from _sampled(perplexity(model, text, source=source, cancel=cancel))
        return StepRecord(name, PERPLEXITY, started, value.to_dict(), resources)
    if kind.startswith(NOISE_PREFIX):
        return (yield from _probe_records(plan, model, name, kind[len(NOISE_PREFIX):], cancel, noise=True))
    return (yield from _probe_records(plan, model, name, kind[len(PROBE_PREFIX):], cancel, baseline=baseline))
