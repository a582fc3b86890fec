"""Variants of a run in parallel: in spawned processes on this machine, or as Ray tasks."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import multiprocessing
import queue
import signal
import socket
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from audit.errors import UserError, first_line
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
# How long `--ray HOST:PORT` waits for a TCP connection to the address before a run starts, and
# for Ray to join the cluster there (Ray itself retries for many minutes, logging each retry).
RAY_REACH_S = 10.0
RAY_CONNECT_S = 120.0
RAY_MISSING = "--ray needs Ray: pip install 'edge-audit[ray]'"


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


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port `--ray ADDRESS` names: None for "local" (a cluster started here) and
    "auto" (the one Ray finds itself); a UserError for an address of any other form."""
    if address in ("local", "auto"):
        return None
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # an IPv6 address: [::1]:6379
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--ray takes 'local', 'auto' or a Ray cluster's HOST:PORT (ray://HOST:PORT for Ray Client), not {address!r}")
    return host, int(port)


def check_ray_reachable(address: str, timeout: float = RAY_REACH_S) -> None:
    """Refuse `--ray` without Ray installed, or at an address nothing answers at: a mistyped host
    or port, or a cluster that is down, would keep Ray retrying for many minutes."""
    endpoint = ray_endpoint(address)
    if importlib.util.find_spec("ray") is None:
        raise UserError(RAY_MISSING)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except socket.gaierror:
        raise UserError(f"cannot connect to the Ray cluster at {address}: no host named {endpoint[0]!r}") from None
    except TimeoutError:
        raise UserError(f"cannot connect to the Ray cluster at {address}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise UserError(f"cannot connect to the Ray cluster at {address}: {(exc.strerror or str(exc)).lower()}") from None


class _MainThreadOnly(logging.Filter):
    """Drops Ray's warning that a ray.init outside the main thread sets no SIGTERM handler: the
    command line's own handler is the one that should stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def connect_ray(ray: Any, address: str, cancel: threading.Event | None, timeout: float = RAY_CONNECT_S) -> None:
    """`ray.init` at `address`. A cluster started here ("local") is started on this thread, as
    before: Ray has the processes it starts killed when the thread that started them ends, and
    the handler it sets for SIGTERM is put back to the one that was set. An existing cluster is
    joined on a thread of its own, waited for at most `timeout` seconds and stopped waiting for
    when `cancel` is set: at an address that accepts connections but is no Ray cluster's, Ray
    retries for many minutes and cannot be interrupted. That thread is left behind when the
    wait ends first."""
    outcome: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except BaseException as exc:  # connection refused, bad address, version mismatch
            outcome["error"] = exc

    if address == "local":
        on_sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        init()
        if on_sigterm is not None:
            signal.signal(signal.SIGTERM, on_sigterm)
    else:
        quiet = _MainThreadOnly()
        logger = logging.getLogger("ray._private.worker")
        logger.addFilter(quiet)
        try:
            thread = threading.Thread(target=init, name="ray-connect", daemon=True)
            thread.start()
            deadline = time.monotonic() + timeout
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(min(0.5, max(0.0, deadline - time.monotonic())))
                check_cancel(cancel)
        finally:
            logger.removeFilter(quiet)
        if thread.is_alive():
            raise UserError(f"cannot connect to the Ray cluster at {address}: Ray did not join it within {timeout:g} s "
                            "(is it the address of a Ray cluster's head node, port 6379 by default?)")
    if "error" in outcome:
        exc = outcome["error"]
        raise UserError(f"cannot connect to the Ray cluster at {address}: {type(exc).__name__}: {first_line(exc, 300)}")


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
        raise UserError(RAY_MISSING) from None
    started_here = not ray.is_initialized()
    if started_here:
        yield Progress("run", finished(), total, f"connecting to the Ray cluster at {address}" if address != "local" else "starting a Ray cluster here")
        connect_ray(ray, address, cancel)
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
