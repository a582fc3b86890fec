"""How many threads inference computes with, and how its idle threads wait.

An edge device is rarely idle. Two things make a job collapse when another process competes
for the cores: more computing threads than free cores, and idle threads that spin on a core
waiting for the next operation while the thread they wait for cannot get one. So:

- unless the user gives `--threads`, a job computes with the cores other processes leave free
  at the moment it starts (measured over a fraction of a second, not the minute-long load
  average), less any it must leave to others (the app keeps one for its own screen); the cores
  counted are those the process may use (its CPU affinity, a container's CPU quota), since
  threads beyond a quota are stopped by the kernel until its next period;
- the inference libraries' idle threads spin only briefly before they sleep; for OpenMP this is
  set in the environment before the libraries load (they read it once), and only where the user
  has not chosen a policy of their own; ONNX Runtime takes it as session options;
- PyTorch scores a batch's rows in workers of one thread each, which never wait on one another:
  they take every core but those left on purpose, and a busy core still gives them its share.

`benchmarks/contention.py` measures what both cost on an idle device and save on a busy one.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, replace
from typing import Any, MutableMapping

# How idle OpenMP threads wait. GNU OpenMP (the one PyTorch ships on Linux) spins for
# GOMP_SPINCOUNT iterations before it sleeps, 300,000 by default: long enough to hold a core
# through the gaps of a whole decode step while another process needs it. A short spin still
# bridges the microseconds between one operation and the next on an idle device; a thread whose
# partner has lost its core soon sleeps. Measured by benchmarks/contention.py (2 cores, decode at
# 2 threads beside one busy process, ms/token): spin 300,000: 131-148; 30,000: 99; 10,000: 70-72;
# 3,000: 64-66; none (OMP_WAIT_POLICY=PASSIVE): 52-57; on the idle device all within 10%.
# On faster cores, where a decode step's operators are shorter, the short spin costs the idle
# device more (2 cores, ms/token idle / busy): 300,000: 31.9 / 253.9; 10,000: 33.0 / 109.9;
# 3,000: 39.9 / 72.4; passive: 54.0 / 56.7. The busy side decides: it is the device's usual state.
WAIT_ENVIRONMENT = {"GOMP_SPINCOUNT": "3000"}
# Any of these set by the user means they chose how threads wait: leave it alone.
USER_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# ONNX Runtime keeps its own thread pool, with a spin bounded in time. Measured on 2 cores
# (onnx-int8 of the default model, decode at 2 threads, ms/token, idle / beside one busy
# process): no spin 22-23 / 24-27; 50 us 17-18 / 26-33; 100 us 17-18 / 31-34; 200 us 17-18 /
# 28-30; one thread 25-28 / 25-27. A wait of 50 us bridges the gaps between a decode step's
# operators; with no spin at all, every operator waits for a sleeping thread to wake.
ONNX_SPIN_US = 50


def onnx_wait_entries(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """ONNX Runtime session config entries for how its idle threads wait: the bounded spin
    above, or none when the user asked OpenMP libraries for a passive wait."""
    environ = os.environ if environ is None else environ
    if environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
        return {"session.intra_op.allow_spinning": "0"}
    return {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": str(ONNX_SPIN_US)}


def prepare_wait_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the short-spin wait for inference threads, unless the user set a wait policy; returns
    what was set. Must run before the inference libraries load (child processes inherit it)."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in USER_WAIT_VARIABLES):
        return {}
    environ.update(WAIT_ENVIRONMENT)
    return dict(WAIT_ENVIRONMENT)


@dataclass(frozen=True)
class ThreadChoice:
    """A job's computing threads and why: the cores, the share other processes were using when it
    started, and the cores left to others on purpose."""

    threads: int
    cores: int | None
    others_busy: float | None  # cores' worth of CPU used by other processes; None: unknown
    reserved: int = 0
    given: bool = False  # the user gave the count (--threads)
    # Workers of one thread each that score a batch's rows side by side (`audit.models.workers`);
    # None where the backend computes every forward on its own threads.
    workers: int | None = None

    def describe(self) -> str:
        """In a user's words: "2 threads (2 cores idle)", "1 thread (other processes keep 1.0
        of 2 cores busy)"."""
        count = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.given:
            return f"{count} (as given)"
        if self.cores is None:
            return f"{count} (cores unknown)"
        why = []
        if self.others_busy is not None and self.others_busy >= 0.05:
            why.append(f"other processes keep {self.others_busy:.1f} of {self.cores} cores busy")
        if self.reserved:
            why.append(f"{self.reserved} core{'s' if self.reserved != 1 else ''} left for the app")
        if not why:
            why.append(f"{self.cores} core{'s' if self.cores != 1 else ''} free")
        if self.workers is not None and self.workers != self.threads:
            count += f", scoring on {self.workers} workers of one thread"
        return f"{count} ({'; '.join(why)})"

    def with_row_workers(self) -> ThreadChoice:
        """This choice with scoring workers: the count given, else every core but those left on
        purpose. Workers never wait on one another, so a core another process keeps busy still
        gives them its share of time, where threads splitting each operation would wait on it."""
        if self.given or not self.cores:
            return replace(self, workers=self.threads)
        return replace(self, workers=max(1, self.cores - self.reserved))

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "cores": self.cores,
            "others_busy_cores": None if self.others_busy is None else round(self.others_busy, 2),
            "reserved_cores": self.reserved,
            "given": self.given,
            "scoring_workers": self.workers,
            "why": self.describe(),
        }


def choose_threads(cores: int | None, others_busy: float | None, reserve: int = 0) -> ThreadChoice:
    """The cores left free: all of them less those other processes keep busy (to the nearest
    whole core, so a service waking now and then takes none) less `reserve`; at least one."""
    if reserve < 0:
        raise ValueError(f"reserve must be 0 or more, not {reserve}")
    if not cores or cores < 1:
        return ThreadChoice(1, None, others_busy, reserve)
    busy = 0 if others_busy is None else math.floor(max(0.0, others_busy) + 0.5)
    return ThreadChoice(max(1, min(cores, cores - busy - reserve)), cores, others_busy, reserve)


def auto_threads(reserve: int = 0, interval_s: float = 0.25) -> ThreadChoice:
    """Threads for a job starting now on this device (see `choose_threads`)."""
    from hardware.load import core_share

    return choose_threads(*core_share(interval_s), reserve)


# The most computing threads a job may be given, per CPU of the device. More threads than CPUs
# only wait on one another; far more exhaust the process's thread limit, and the libraries that
# start them then crash the process (`--threads 99999` on 2 CPUs ended in a segmentation fault).
THREADS_PER_CPU = 4


def most_threads() -> int:
    """The most threads `--threads` may ask for on this device: THREADS_PER_CPU per online CPU."""
    from hardware.load import read_cores_online

    return THREADS_PER_CPU * (read_cores_online() or 1)


def thread_count_problem(threads: int) -> str | None:
    """Why `threads` cannot be a job's thread count on this device, or None when it can."""
    if threads < 1:
        return f"must be at least 1, not {threads}"
    limit = most_threads()
    if threads > limit:
        return (f"must be at most {limit} on this device ({THREADS_PER_CPU} per CPU, {limit // THREADS_PER_CPU} CPUs), not {threads}: "
                "more threads than CPUs only wait on one another")
    return None


def resolve_threads(threads: int | None, reserve: int = 0, *, row_workers: bool = False) -> ThreadChoice:
    """The user's count when given, else one fitted to the device's load now; with scoring
    workers (`ThreadChoice.with_row_workers`) for a backend that has them."""
    if threads:
        from hardware.load import read_usable_cores

        choice = ThreadChoice(threads, read_usable_cores(), None, 0, given=True)
    else:
        choice = auto_threads(reserve)
    return choice.with_row_workers() if row_workers else choice


def apply_torch_threads(choice: ThreadChoice) -> None:
    """Compute with `choice.threads` in PyTorch from now on (when PyTorch is loaded)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
