"""What the resource sampler costs: its own CPU time per snapshot, and the slowdown of a fixed
CPU workload with and without it, alternated so that other load on the machine hits both.

    python benchmarks/sampler_overhead.py [--interval-s 0.25] [--rounds 6] [--work-s 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hardware.readers import default_readers  # noqa: E402
from hardware.sampler import ResourceSampler  # noqa: E402


def workload(seconds_hint: float) -> float:
    """A fixed amount of matrix work (sized once to about `seconds_hint`); returns its seconds."""
    import torch

    a = torch.randn(384, 384)
    started = time.perf_counter()
    for _ in range(workload.iterations):
        a = torch.tanh(a @ a)
    return time.perf_counter() - started


workload.iterations = 1


def calibrate(seconds: float) -> None:
    workload.iterations = 20
    took = workload(0)
    workload.iterations = max(20, int(20 * seconds / max(took, 1e-6)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval-s", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--work-s", type=float, default=3.0)
    args = parser.parse_args(argv)

    readers = default_readers()
    print(f"readers on this device: {[getattr(r, '__qualname__', type(r).__name__) for r in readers] or 'none beyond psutil'}")
    calibrate(args.work_s)
    workload(0)  # warm-up
    plain: list[float] = []
    sampled: list[float] = []
    per_sample_ms: list[float] = []
    overhead_pct: list[float] = []
    for _ in range(args.rounds):
        plain.append(workload(0))
        with ResourceSampler(args.interval_s, readers=default_readers()) as sampler:
            sampled.append(workload(0))
        summary = sampler.summary()
        per_sample_ms.append(1000 * summary["sampler_cpu_s"] / summary["samples"])
        overhead_pct.append(summary["sampler_overhead_percent"])
    plain_s, sampled_s = statistics.median(plain), statistics.median(sampled)
    print(f"interval {args.interval_s} s, {args.rounds} rounds of a {plain_s:.2f} s workload")
    print(f"sampler CPU per snapshot: median {statistics.median(per_sample_ms):.3f} ms")
    print(f"sampler CPU share of wall time: median {statistics.median(overhead_pct):.3f} % of one core")
    print(f"workload median without sampler {plain_s:.3f} s, with sampler {sampled_s:.3f} s, "
          f"ratio {sampled_s / plain_s:.4f} (noise on a shared machine is larger than the effect)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
