"""The step vocabulary of a run: which steps each variant of a plan has, and the record a
finished step leaves in the store."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from audit import atomic
from audit.errors import UserError
from audit.paths import require_working_folder
from audit.plans import Plan, variant_name_problem
from audit.progress import Job, Progress, check_cancel, clock
from audit.store import ResultsStore, RunRecord

if TYPE_CHECKING:
    from audit.probes.compare import ProbeRecord

BASELINE = "baseline"
COMPRESS, PERPLEXITY, PROFILE = "compress", "perplexity", "profile"
# Stored whenever a variant's model is loaded for its measurements (not a planned step: it
# takes about a second, and a changed folder must be fingerprinted again).
FINGERPRINT = "fingerprint"
# Stored, like the fingerprint, whenever a variant given as a folder is loaded: the share of
# zero weights measured in it and its sizes on disk (no compress step says them).
FOLDER = "folder"
PROBE_PREFIX = "probe:"
NOISE_PREFIX = "noise:"  # the baseline scored again with other seeds: sampled answers' own churn


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
    # Set for a stored step that no longer holds (measured on weights the variant's folder no
    # longer has): committed as failed with this reason, so the run reads it as not done.
    error: str | None = None

    def commit(self, store: ResultsStore, run_id: int) -> None:
        if self.error is not None:
            store.record_failure(run_id, self.variant, self.kind, self.error, self.started_at)
            return
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


def named(name: str, message: str) -> str:
    """A variant's progress message as a run of several says it: led by the variant's name,
    unless the message already is ("wanda-50: 12/60 items")."""
    return message if message.startswith(f"{name}:") else f"{name}: {message}"


def variant_names(plan: Plan) -> list[str]:
    return [BASELINE] + [v.name for v in plan.variants]


def baseline_recipe(model: str) -> dict[str, Any]:
    """The baseline as what it is: "dense" only when the folder has no compression on record
    (a pruned or quantized folder loaded as the baseline keeps its method and sparsity)."""
    from audit.models.meta import compression_label, read_meta

    folder = Path(model).expanduser()
    described = compression_label(read_meta(folder)) if folder.is_dir() else None
    if described is None:
        return {"kind": "baseline", "model": model, "method": "dense", "sparsity": 0.0}
    method, sparsity = described
    return {"kind": "baseline", "model": model, "method": f"{method} (as loaded)", "sparsity": sparsity}


def variant_recipe(plan: Plan, name: str) -> dict[str, Any]:
    if name == BASELINE:
        return baseline_recipe(plan.model)
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


def done_steps(store: ResultsStore, run_id: int, plan: Plan, name: str) -> set[str]:
    """The steps of a variant already stored, and its fingerprint and folder facts when stored (a
    resumed run keeps what it measured, once its weights are found to be the ones it measured)."""
    done = {k for k in steps_for(plan, name) if store.step(run_id, name, k) is not None}
    for kind in (FINGERPRINT, FOLDER):
        if store.step(run_id, name, kind) is not None:
            done.add(kind)
    return done


def stored_fingerprint(store: ResultsStore, run_id: int, name: str) -> dict[str, Any] | None:
    """The format and digest of the weights a variant's stored steps were measured on, None when
    none are stored."""
    step = store.step(run_id, name, FINGERPRINT)
    result = (step or {}).get("result") or {}
    return {"format": result.get("format"), "digest": result.get("digest")} if result.get("digest") else None


def variant_folder(work_dir: Path, name: str) -> Path:
    """The variant's folder: inside the run's work folder, whatever its name (plans refuse names
    that are paths; a run stored with one is refused here rather than written elsewhere)."""
    if problem := variant_name_problem(name):
        raise UserError(problem)
    return work_dir / name


def runs_folder(store: ResultsStore) -> Path:
    """Where runs that name no work folder keep theirs: beside the store."""
    return store.path.parent / "runs"


def run_folder(store: ResultsStore, record: RunRecord) -> Path:
    """Where a stored run's variant folders are written: the folder it names, else beside the store."""
    return Path(record.work_dir) if record.work_dir else runs_folder(store) / f"run-{record.id}"


# -- one process at a time runs a run's steps --------------------------------------------------
# The runs this process holds, by work folder: the lock and how many holders share it (the app
# runs a session's jobs in threads of one process).
_HELD: dict[Path, list[Any]] = {}
_HELD_GUARD = threading.Lock()
TAKE_ATTEMPTS, TAKE_RETRY_S = 3, 0.05


@contextlib.contextmanager
def driving(run_id: int, work_dir: Path) -> Iterator[None]:
    """Hold a run for this process while it runs steps of it or sets its status. While another
    process holds it, a UserError; holders in this process share it. The hold is a lock beside
    the run's folder, which the system releases however its holder ends."""
    require_working_folder()  # a relative folder is found from it
    key = Path(os.path.abspath(work_dir))
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None:
            lock: IO[str] | None = None
            for attempt in range(TAKE_ATTEMPTS):  # not refused for a listing's instant look (run_held)
                if attempt:
                    time.sleep(TAKE_RETRY_S)
                if (lock := atomic.writer_lock(key)) is not None:
                    break
            if lock is None:
                raise UserError(
                    f"run {run_id} is being run by another process (the app, or edge-audit run); "
                    "resume it once that process has ended"
                )
            held = _HELD[key] = [lock, 0]
        held[1] += 1
    try:
        yield
    finally:
        with _HELD_GUARD:
            held[1] -= 1
            if held[1] == 0:
                del _HELD[key]
                held[0].close()


def run_held(store: ResultsStore, record: RunRecord) -> bool:
    """Whether a process (this one too) holds the run (`driving`) now."""
    return atomic.is_locked(run_folder(store, record))


def pruned_folder(folder: Path) -> Path:
    """Where a variant that is pruned, then quantized, keeps its pruned model."""
    return folder.with_name(folder.name + ".pruned")


def writing_variant_folder(folder: Path, cancel: threading.Event | None = None) -> Job[IO[str]]:
    """Hold the variant's folder for writing, once no other process writes it (waiting, and
    saying so, until then), and first remove what a process killed while writing it left
    behind. Returns the lock file: closing it releases the folder."""
    lock = yield from atomic.writer_lock_when_free(folder, COMPRESS, f"waiting for another process to finish writing {folder}", cancel)
    _remove_unfinished(folder)
    return lock


def remove_unfinished_variant(folder: Path) -> None:
    """Remove what a process killed while writing the variant's folder left behind, unless
    another process is writing it now."""
    lock = atomic.writer_lock(folder)
    if lock is not None:
        with lock:
            _remove_unfinished(folder)


def _remove_unfinished(folder: Path) -> None:
    for target in (folder, pruned_folder(folder)):
        atomic.remove_unfinished(target)


def model_spec_for(plan: Plan, name: str, work_dir: Path) -> str:
    if name == BASELINE:
        return plan.model
    spec = plan.variant(name)
    return spec.path or str(variant_folder(work_dir, name))


# How often a waiting variant says it is still waiting for the baseline's probe (seconds).
WAITING_SAID_EVERY_S = 15.0


@dataclass(frozen=True)
class BaselineItems:
    """The baseline's probe of a suite (by its spec) as the run stored it, None while it is not:
    what a variant's sequential probe compares with. With `poll_s`, another process of the run
    is storing it, and `probe` waits for it, checking the store that often."""

    read: Callable[[str], "ProbeRecord | None"]
    poll_s: float | None = None

    def probe(self, suite: str, cancel: threading.Event | None = None) -> Job["ProbeRecord | None"]:
        """The baseline's probe of `suite`; while it is awaited, an event every
        `WAITING_SAID_EVERY_S` says so (a worker silent for minutes looks stuck)."""
        started = time.monotonic()
        said: float | None = None
        while (record := self.read(suite)) is None and self.poll_s is not None:
            check_cancel(cancel)
            now = time.monotonic()
            if said is None or now - said >= WAITING_SAID_EVERY_S:
                said = now
                waited = f" ({clock(now - started)} so far)" if now > started + 1 else ""
                yield Progress("probe", 0, None, f"waiting for the baseline's probe of {suite}{waited}")
            time.sleep(self.poll_s)
        return record


def stored_baseline(store: ResultsStore, run_id: int, poll_s: float | None = None) -> BaselineItems:
    """The baseline's probe of a suite as the run stored it: its settings and items. With
    `poll_s`, waited for until another process of the run stores it (the run's variants in
    parallel processes: the baseline's worker starts first, and a failure of it ends the run,
    and the waiting process with it)."""
    from audit.probes.compare import ProbeRecord
    from audit.probes.items import ItemResult

    def read(suite: str) -> ProbeRecord | None:
        step = store.step(run_id, BASELINE, PROBE_PREFIX + suite)
        if step is None:
            return None
        return ProbeRecord(step["result"] or {}, [ItemResult.from_dict(row) for row in store.items(run_id, BASELINE, suite)])

    return BaselineItems(read, poll_s)
