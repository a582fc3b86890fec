"""Variants of a run in parallel: in spawned processes on this machine, or as Ray tasks."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import queue
import tempfile
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from audit.errors import UserError
from audit.models import LoadOptions
from audit.plans import Plan, read_stored_plan
from audit.progress import Job, Progress, check_cancel, drive
from audit.run.execute import check_before_profile, execute_variant, profile_step
from audit.run.pool import process_pool, worker_stop
from audit.run.steps import BASELINE, COMPRESS, PROFILE, BaselineItems, StepRecord, done_steps, model_spec_for, named, remove_unfinished_variant, steps_for, stored_baseline, stored_fingerprint, variant_folder, variant_names
from audit.store import ResultsStore
from audit.threads import resolve_threads

if TYPE_CHECKING:
    from audit.probes.compare import ProbeRecord

# How often a variant's worker checks the store for the baseline's probe it waits for (seconds).
BASELINE_POLL_S = 1.0
# How long a stopped run waits for its workers to reach their cancel checks (a prune checks
# after each block of layers, a probe after each batch) before it terminates them.
STOP_GRACE_S = 20.0


def _variant_in_process(
    store_path: str, run_id: int, plan_text: str, plan_path: str | None, name: str, work_dir: str, load: dict[str, Any], events: Any, threads: int,
    source: dict[str, Any] | None,
) -> None:
    """A worker process: run one variant's steps (profile excepted), committing each to the store,
    computing with its share of the cores. A variant probed sequentially waits for the baseline's
    items of the suite, which the first worker (the baseline's) stores. `source`: the baseline's
    fingerprint as stored before the run's call began, which the plan's model must still have
    for the variant to be compressed from it (None: the baseline is measured in this call).
    When the run stops early, the worker stops at its next cancel check, removing what it was writing."""
    plan = read_stored_plan(plan_text, plan_path)
    with ResultsStore(store_path) as store:
        done = done_steps(store, run_id, plan, name)
        job = execute_variant(plan, name, Path(work_dir), done, lambda r: r.commit(store, run_id), LoadOptions(**dict(load, threads=threads)),
                              worker_stop(), skip_profile=True, baseline=stored_baseline(store, run_id, poll_s=BASELINE_POLL_S),
                              fingerprint=stored_fingerprint(store, run_id, name), source_fingerprint=source)
        for event in job:
            events.put((name, event.stage, event.done, event.total, event.message))


def run_in_processes(
    plan: Plan,
    run_id: int,
    store: ResultsStore,
    work_dir: Path,
    workers: int,
    load: LoadOptions,
    cancel: threading.Event | None,
    total: int,
    finished: Callable[[], int],
) -> Job[None]:
    """Variants in `workers` parallel processes; profiles afterwards one at a time, since
    latency measured while other variants compete for the cores would mean nothing."""
    names = variant_names(plan)
    # The workers share the cores free now (or the count the user gave) between them.
    threads = max(1, resolve_threads(load.threads, load.reserve_cores).threads // workers)
    manager = multiprocessing.get_context("spawn").Manager()
    events = manager.Queue()
    load_data = asdict(load)
    # Read once, before any worker starts: each worker read it as it started, so whether a
    # variant's source was checked depended on whether the baseline's worker had stored its
    # fingerprint by then. As in one process, a call checks against what was stored before it.
    source = stored_fingerprint(store, run_id, BASELINE)
    try:
        with process_pool(workers, grace_s=STOP_GRACE_S) as pool:
            futures = {
                pool.submit(_variant_in_process, str(store.path), run_id, plan.text, plan.path, name, str(work_dir), load_data, events, threads,
                            source): name
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
    except BaseException:
        # A worker terminated while it wrote a variant's folder left the temporary one.
        for name in names:
            if COMPRESS in steps_for(plan, name):
                remove_unfinished_variant(variant_folder(work_dir, name))
        raise
    finally:
        manager.shutdown()
    for name in names:
        if PROFILE in steps_for(plan, name) and store.step(run_id, name, PROFILE) is None:
            spec = model_spec_for(plan, name, work_dir)
            # Its worker ended a while ago (the other workers ran on): the folder is read again,
            # its events named as a run in one process names them.
            check = check_before_profile(plan, name, spec, stored_fingerprint(store, run_id, name), load, cancel)
            yield from (replace(event, message=named(name, event.message)) for event in check)
            record = yield from profile_step(plan, name, spec, load, cancel)
            record.commit(store, run_id)
            yield Progress("run", finished(), total, f"{name} profiled", {"run_id": run_id})


def _drain(events: Any) -> Iterator[Progress]:
    while True:
        try:
            name, stage, done, total, message = events.get_nowait()
        except queue.Empty:
            return
        yield Progress(stage, done, total, named(name, message))


def _variant_on_ray(plan_text: str, plan_path: str | None, name: str, done: list[str], load: dict[str, Any],
                    baseline: dict[str, ProbeRecord] | None = None, fingerprint: dict[str, Any] | None = None,
                    source: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A Ray task: run one variant in a scratch folder on whichever node it lands, and return
    its step records for the driver to commit (a remote node cannot reach the driver's store).
    `baseline`: the baseline's stored probe (settings and items) by suite, for a plan's sequential probes.
    `fingerprint`: the one stored for the variant's weights (`stored_fingerprint`); `source`, the
    baseline's, which the plan's model on the node must still have for the variant to be compressed.
    The scratch folder (the variant's compressed weights) is removed when the task ends, however
    it ends: every run would otherwise leave a model's worth of files on the node's disk."""
    plan = read_stored_plan(plan_text, plan_path)
    records: list[StepRecord] = []
    with tempfile.TemporaryDirectory(prefix="edge-audit-ray-", ignore_cleanup_errors=True) as scratch:
        drive(execute_variant(plan, name, Path(scratch), set(done), records.append, LoadOptions(**load), baseline=BaselineItems((baseline or {}).get),
                              fingerprint=fingerprint, source_fingerprint=source))
    return [asdict(r) for r in records]


def run_on_ray(
    plan: Plan,
    run_id: int,
    store: ResultsStore,
    address: str,
    load: LoadOptions,
    cancel: threading.Event | None,
    total: int,
    finished: Callable[[], int],
) -> Job[None]:
    """Every unfinished variant as a Ray task on the cluster at `address` ("local" starts one)."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'edge-audit[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # connection refused, bad address, version mismatch
            raise UserError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    try:
        remote = ray.remote(_variant_on_ray)
        load_data = asdict(load)
        names = variant_names(plan)
        # A plan's sequential probes compare each variant with the baseline's items: the baseline
        # runs first, and its items go to the other tasks.
        waves = [names[:1], names[1:]] if plan.probes.sequential else [names]
        for wave in waves:
            baseline = None
            if wave is not waves[0]:
                read = stored_baseline(store, run_id).read
                # Put in the object store once for every task of the wave, not copied into each.
                baseline = ray.put({suite: record for suite in plan.probes.suites if (record := read(suite)) is not None})
            refs = {}
            for name in wave:
                done = done_steps(store, run_id, plan, name)
                if not set(steps_for(plan, name)) <= done:
                    refs[remote.remote(plan.text, plan.path, name, sorted(done), load_data, baseline, stored_fingerprint(store, run_id, name),
                                       stored_fingerprint(store, run_id, BASELINE))] = name
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
