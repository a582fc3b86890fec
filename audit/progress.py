"""Progress events for long jobs, which are generators that yield them and return a result."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generator, Mapping, NamedTuple, Sequence, TypeVar

from audit.errors import Cancelled
from hardware.load import SystemLoad, read_load

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a long job: `done` of `total` units of `stage` (total None when unknown)."""

    stage: str
    done: float = 0.0
    total: float | None = None
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    # When the event was made (time.monotonic(), one clock for every process on the machine):
    # how long a job has been silent is the time since its latest event.
    at: float = field(default_factory=time.monotonic, compare=False, repr=False)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))


Job = Generator[Progress, None, T]


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise Cancelled when the job's cancel event is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def drive(job: Job[T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Run a job to its end, passing each event to `on_progress`; return the job's result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)


def relay(job: Job[T], stage: str | None = None) -> Job[T]:
    """Yield a sub-job's events (renamed to `stage` when given) and return its result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if stage is not None and event.stage != stage:
            event = Progress(stage, event.done, event.total, event.message or event.stage, event.data)
        yield event


def clock(seconds: float) -> str:
    """A duration as a clock: 4:05, or 1h07 from an hour up."""
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


# -- a job that makes no progress ----------------------------------------------------------------
# A job whose latest event is this old is said to make no progress (a probe or a profile run
# reports at least every few seconds on a free device).
STALL_S = 60.0


def quiet_for(seconds: float) -> str:
    """The whole seconds a job has been silent, to the nearest: a difference of two clock
    readings 61 s apart may come out a hair under 61."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60} s"


def stall_notice(quiet_s: float, load: SystemLoad) -> str:
    """What the bar says of a silent job ("no progress for 75 s"), with the device's load when it
    is known, blamed only when it is high."""
    said = f"no progress for {quiet_for(quiet_s)}"
    if load.load_1m is None or not load.cores:
        return said
    figures = f"load {load.load_1m:.1f} on {load.cores} {'core' if load.cores == 1 else 'cores'}"
    return f"{said}: the device is busy ({figures})" if load.busy else f"{said} ({figures})"


class StallWatch:
    """Says when a job driven beside it has made no progress for `stall_s`, and again each
    `stall_s` it stays silent: `say(stage of its latest event, stall_notice(...))`, from a thread
    of its own that looks every `every_s` (use it as a context manager). A job starved of the
    cores otherwise leaves a bar or a log standing still without a word. Tell it of each event
    with `saw`."""

    def __init__(self, say: Callable[[str, str], None], load: Callable[[], SystemLoad] = read_load,
                 clock: Callable[[], float] = time.monotonic, every_s: float = 1.0, stall_s: float = STALL_S) -> None:
        self._say, self._load, self._clock = say, load, clock
        self._every_s, self._stall_s = every_s, stall_s
        self._lock = threading.Lock()
        self._stage = ""
        self._last = clock()
        self._said = 0  # how many whole stall_s of the current silence were said
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def saw(self, event: Progress) -> None:
        """The job made progress: the silence starts again."""
        with self._lock:
            self._stage, self._last, self._said = event.stage, self._clock(), 0

    def check(self) -> None:
        """Say the silence if it has lasted another stall_s since it was last said."""
        with self._lock:
            quiet = self._clock() - self._last
            periods = int(quiet // self._stall_s)
            if periods <= self._said:
                return
            self._said, stage = periods, self._stage
        self._say(stage, stall_notice(quiet, self._load()))

    def _watch(self) -> None:
        while not self._stop.wait(self._every_s):
            self.check()

    def __enter__(self) -> StallWatch:
        self._thread = threading.Thread(target=self._watch, name="edge-audit-stall-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# -- jobs of several steps ----------------------------------------------------------------------
class Step(NamedTuple):
    """One step of a multi-step job: what it works on (a variant) and what it does (its kind:
    "compress", "perplexity", "probe:builtin", "profile", ...)."""

    target: str
    kind: str


@dataclass(frozen=True)
class StepPlace:
    """Where a multi-step job stands, carried by every event of its steps in `data["place"]`
    (beside `data["step"]` and `data["steps"]`, its number and count)."""

    number: int  # the step running, from 1 (or the one just finished, with `finished_now`)
    count: int
    step: Step
    started: float  # time.monotonic() when this step's work began
    planned: tuple[Step, ...]  # every step of the job, in order
    finished: tuple[tuple[Step, float], ...]  # the steps finished so far, with their seconds
    finished_now: bool = False  # this event says that `step` has just finished
    # The event's stage within the step: when it began and the fraction it began from, for its rate.
    stage_started: float | None = None
    stage_from: float | None = None

    @property
    def finished_steps(self) -> list[Step]:
        return [step for step, _ in self.finished]

    @property
    def unfinished_steps(self) -> list[Step]:
        done = set(self.finished_steps)
        return [step for step in self.planned if step not in done]


def step_place(event: Progress) -> StepPlace | None:
    place = event.data.get("place")
    return place if isinstance(place, StepPlace) else None


class StepCounter:
    """Numbers and times the steps of a job that runs several (perplexity, probe and profile of
    every variant...), so that each step's events say which step of how many they belong to and
    how long the finished ones took: enough for an overall bar and an ETA from measured rates,
    wherever the events are shown. One counter is shared by all the calls that make up the job."""

    def __init__(self, planned: Sequence[tuple[str, str]]) -> None:
        self.planned = tuple(Step(*step) for step in planned)
        self.finished: list[tuple[Step, float]] = []
        self._current: Step | None = None
        self._started = 0.0

    @property
    def count(self) -> int:
        # A step can be added on the way (a variant compressed again because its folder is gone).
        return max(len(self.planned), len(self.finished) + (self._current is not None))

    def lead_in(self, target: str, kind: str, job: Job[T]) -> Job[T]:
        """Work a step needs before it runs (loading its model): its events and its time are
        that step's."""
        self._begin(Step(target, kind))
        return (yield from self._tagged(job))

    def run(self, target: str, kind: str, job: Job[T], then: Callable[[T], None]) -> Job[T]:
        """Run one step: its events carry its place, `then` is given its result (to store it),
        and then it counts as finished, which one more event says."""
        step = Step(target, kind)
        self._begin(step)
        result = yield from self._tagged(job)
        then(result)
        self.finished.append((step, time.monotonic() - self._started))
        self._current = None
        place = self._place(step, finished_now=True)
        yield Progress("step", 0, None, f"{target}: {kind} finished", {"step": place.number, "steps": place.count, "place": place})
        return result

    def _begin(self, step: Step) -> None:
        if self._current != step:
            self._current, self._started = step, time.monotonic()

    def _place(self, step: Step, *, finished_now: bool = False) -> StepPlace:
        number = len(self.finished) if finished_now else len(self.finished) + 1
        return StepPlace(number, self.count, step, self._started, self.planned, tuple(self.finished), finished_now)

    def _tagged(self, job: Job[T]) -> Job[T]:
        assert self._current is not None
        place = self._place(self._current)
        stage, stage_started, stage_from = None, None, None
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if event.stage != stage:
                stage, stage_started, stage_from = event.stage, None, None
            if stage_from is None and event.fraction is not None:
                stage_started, stage_from = event.at, event.fraction
            here = replace(place, stage_started=stage_started, stage_from=stage_from)
            yield replace(event, data={**event.data, "step": place.number, "steps": place.count, "place": here})


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def stage_seconds_left(event: Progress, now: float) -> float | None:
    """Seconds left in the event's stage at the rate measured since the stage began (negative
    once that time has run out with no event since: the stage is late); None before there is
    a rate."""
    place = step_place(event)
    fraction = event.fraction
    if place is None or fraction is None or place.stage_started is None or place.stage_from is None:
        return None
    gained, span = fraction - place.stage_from, event.at - place.stage_started
    if gained <= 0 or span <= 0:
        return None
    return span * (1 - fraction) / gained - (now - event.at)


def job_seconds_left(event: Progress, now: float) -> float | None:
    """Seconds left for a whole multi-step job whose latest event is `event`: the running step
    at its own measured rate, or as long as the finished steps of its kind took; each step to
    come as long as the finished ones of its kind took (of any kind when none of its kind has
    finished yet). None until there is a measured rate for all of that."""
    place = step_place(event)
    if place is None:
        return None
    seconds_by_kind: dict[str, list[float]] = {}
    for step, seconds in place.finished:
        seconds_by_kind.setdefault(step.kind, []).append(seconds)
    every = [seconds for _, seconds in place.finished]

    def typical(kind: str) -> float | None:
        return _mean(seconds_by_kind.get(kind) or every)

    def usual_left(usual: float | None) -> float | None:
        left = None if usual is None else usual - (now - place.started)
        return left if left is not None and left > 0 else None  # None: later than usual

    if place.finished_now:
        running: float | None = 0.0
    else:
        at_rate = stage_seconds_left(event, now)
        same_kind = usual_left(_mean(seconds_by_kind.get(place.step.kind, [])))
        if at_rate is None:
            running = usual_left(typical(place.step.kind))
        elif at_rate <= 0:
            # Late at its own rate: only what steps of its kind took can still say how long.
            running = same_kind
        else:
            # A step can have stages (loading, then scoring) and the rate is the stage's: when
            # steps of this kind have finished, the longer estimate is the safer one.
            running = at_rate if same_kind is None else max(at_rate, same_kind)
    ahead = [typical(step.kind) for step in place.planned[place.number:]]
    if running is None or any(seconds is None for seconds in ahead):
        return None
    return running + sum(s for s in ahead if s is not None)
