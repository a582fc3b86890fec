"""Decode latency of the default model with and without a competing CPU-bound process, with
OpenMP's wait policy for the inference libraries' idle threads unset (the library's default:
spin a while, then sleep), ACTIVE (spin) and PASSIVE (sleep at once), in one run: what a thread
count and a wait policy cost on an idle device and on a busy one.

    python benchmarks/contention.py                 # 2 threads, 1 competing process
    python benchmarks/contention.py --threads 1 --competitors 2

Each case is `edge-audit profile --json` in a fresh process; the competitor is a Python loop
that keeps one core busy, started a few seconds before the profile. Prints ms/token p50 for
each case and the ratio of contended to idle under each policy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True: pass"
DEFAULT = "unset"
POLICIES = (DEFAULT, "ACTIVE", "PASSIVE")


def profile(policy: str, threads: int, runs: int, new_tokens: int) -> float:
    """ms/token p50 of a forced-length decode, in a fresh process under `policy`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != DEFAULT:
        env["OMP_WAIT_POLICY"] = policy
    command = [
        sys.executable, "-m", "tui.cli", "profile", "--json", "--threads", str(threads),
        "--runs", str(runs), "--warmup-runs", "1", "--new-tokens", str(new_tokens), "--probe-items", "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"profile failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return float(json.loads(done.stdout)["decode_ms_per_token_p50"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    parser.add_argument("--competitors", type=int, default=1, help="CPU-bound processes beside it (default 1)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case (default 5)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per run (default 16)")
    args = parser.parse_args()

    results: dict[tuple[str, bool], float] = {}
    for policy in POLICIES:
        results[(policy, False)] = profile(policy, args.threads, args.runs, args.new_tokens)
        hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.competitors)]
        try:
            time.sleep(3)
            results[(policy, True)] = profile(policy, args.threads, args.runs, args.new_tokens)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    print(f"decode ms/token p50, {args.threads} threads, {args.competitors} competing process(es), {os.cpu_count()} cores")
    print(f"{'policy':<8} {'idle':>8} {'busy':>8} {'busy/idle':>10}")
    for policy in POLICIES:
        idle, busy = results[(policy, False)], results[(policy, True)]
        print(f"{policy:<8} {idle:>8.1f} {busy:>8.1f} {busy / idle:>9.2f}x")
    for policy in POLICIES[1:]:
        print(f"{policy} / unset: idle {results[(policy, False)] / results[(DEFAULT, False)]:.2f}x, busy {results[(policy, True)] / results[(DEFAULT, True)]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
