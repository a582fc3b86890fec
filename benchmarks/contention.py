"""Profile decode and probe scoring of the default model with and without a competing CPU-bound
process, in one run: what the default settings lose on a busy device, and what the old default
(every core, the OpenMP library's own long spin) lost.

    python benchmarks/contention.py                      # 1 competing process
    python benchmarks/contention.py --competitor torch   # a competitor that computes with threads itself, as a prune does
    python benchmarks/contention.py --competitors 2 --probe-limit 8
    python benchmarks/contention.py --only profile --wait-sweep   # how idle threads should wait
    python benchmarks/contention.py --model /path/to/onnx-int8       # any model edge-audit loads

Each case is `edge-audit profile --json` or `edge-audit probe --json` in a fresh process, so the
wait environment applies as it does for a user. "default" is what a user gets: no --threads
(the cores free when the job starts) and the product's wait environment. "all cores, long spin"
is the old default: --threads set to every core, GOMP_SPINCOUNT at the library's 300,000.
The competitor starts a few seconds before the measured command. Idle and busy cases alternate
per setting, so drifting load hits both alike. Prints decode ms/token p50 and probe items/s for
each case, and the ratio busy/idle (target: 1.5x or less for the default).

The last column is the busy default against the idle default held to the cores the competitors
leave free (--threads N): above 1x, what the competitor costs beyond its cores; below 1x, what
the job gains from a share of the busy cores. Profile decode splits each operation over its
threads and takes the free cores only. Probe scoring splits a batch's rows between workers of
one thread each, one per core, which never wait on one another: beside one single-thread
competitor on 2 cores, the scheduler gives each of the 3 busy threads 2/3 of a core, so the
probe has 4/3 of the 2 cores it had idle: about 1.5x is the least slowdown a fair share allows.
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
sys.path.insert(0, str(ROOT))

from audit.models.aliases import DEFAULT_ALIAS  # noqa: E402
from audit.threads import USER_WAIT_VARIABLES  # noqa: E402

COMPETITORS = {
    "loop": "while True: pass",
    # Computes with two spinning threads, as a prune or another inference job does.
    "torch": "import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\nwhile True: a @ a",
}
TARGET = 1.5


def settings(cores: int, wait_sweep: bool) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each setting's extra command-line arguments and environment."""
    chosen = {
        "default": ([], {}),
        "all cores, long spin": (["--threads", str(cores)], {"GOMP_SPINCOUNT": "300000"}),
    }
    if wait_sweep:  # every core, each way an idle thread can wait
        for spins in ("30000", "10000", "3000"):
            chosen[f"all cores, spin {spins}"] = (["--threads", str(cores)], {"GOMP_SPINCOUNT": spins})
        chosen["all cores, passive"] = (["--threads", str(cores)], {"OMP_WAIT_POLICY": "PASSIVE"})
    return chosen


def run_cli(args: list[str], env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in USER_WAIT_VARIABLES}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-m", "tui.cli", *args, "--json"], capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else str(done.returncode)
        raise SystemExit(f"edge-audit {args[0]} failed: {last}")
    return json.loads(done.stdout)


def decode_ms(extra: list[str], env: dict[str, str], args: argparse.Namespace) -> tuple[float, object]:
    data = run_cli(["profile", "--model", args.model, *extra, "--runs", str(args.runs), "--warmup-runs", "1", "--new-tokens", str(args.new_tokens), "--probe-items", "0"], env)
    return float(data["decode_ms_per_token_p50"]), data.get("threads")


def probe_rate(extra: list[str], env: dict[str, str], args: argparse.Namespace) -> tuple[float, str]:
    data = run_cli(["probe", "--model", args.model, *extra, "--limit", str(args.probe_limit)], env)
    threads = data.get("threads") or {}
    workers = threads.get("scoring_workers")
    taken = f"{threads.get('threads')}" + (f" ({workers} workers)" if workers and workers != threads.get("threads") else "")
    return float(data["items_per_s"]), taken


def with_competitors(kind: str, count: int, measure):
    hogs = [subprocess.Popen([sys.executable, "-c", COMPETITORS[kind]], cwd=ROOT) for _ in range(count)]
    try:
        time.sleep(3)
        return measure()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_ALIAS, help=f"what to profile and probe (default {DEFAULT_ALIAS})")
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="loop", help="what competes (default loop: one core each)")
    parser.add_argument("--competitors", type=int, default=1, help="competing processes (default 1)")
    parser.add_argument("--runs", type=int, default=5, help="timed profile runs per case (default 5)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per profile run (default 16)")
    parser.add_argument("--probe-limit", type=int, default=24, help="built-in probe items per category (default 24: long enough for a steady rate)")
    parser.add_argument("--only", choices=("profile", "probe"), help="measure one of the two")
    parser.add_argument("--wait-sweep", action="store_true", help="also every core under shorter spins and a passive wait")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    rows = []
    # The threads the default takes with the competitors running: the cores they leave free.
    busy_default_threads = max(1, cores - args.competitors)
    for name, (extra, env) in settings(cores, args.wait_sweep).items():
        held = ["--threads", str(busy_default_threads)] if name == "default" else None
        if args.only != "probe":
            idle, idle_threads = decode_ms(extra, env, args)
            busy, busy_threads = with_competitors(args.competitor, args.competitors, lambda: decode_ms(extra, env, args))
            if held and busy_threads:
                held = ["--threads", str(busy_threads)]
            same = decode_ms(held, env, args)[0] if held else None
            rows.append(("profile decode ms/token", name, idle, busy, busy / idle, f"{idle_threads} / {busy_threads}",
                         None if same is None else busy / same))
        if args.only != "profile":
            idle, idle_threads = probe_rate(extra, env, args)
            busy, busy_threads = with_competitors(args.competitor, args.competitors, lambda: probe_rate(extra, env, args))
            same = probe_rate(held, env, args)[0] if held else None
            rows.append(("probe items/s", name, idle, busy, idle / busy, f"{idle_threads} / {busy_threads}",
                         None if same is None else same / busy))

    print(f"{args.model}: {cores} cores, {args.competitors} competing '{args.competitor}' process(es); slowdown = busy time / idle time")
    print(f"{'figure':<24} {'setting':<21} {'idle':>8} {'busy':>8} {'slowdown':>9}  {'threads idle / busy':<20} busy / idle at busy threads")
    for figure, name, idle, busy, slowdown, threads, same in rows:
        print(f"{figure:<24} {name:<21} {idle:>8.1f} {busy:>8.1f} {slowdown:>8.2f}x  {threads:<20} {'' if same is None else f'{same:.2f}x'}")
    defaults = [slowdown for _, name, _, _, slowdown, _, _ in rows if name == "default"]
    worst = max(defaults)
    print(f"default settings: worst slowdown {worst:.2f}x, target {TARGET:.1f}x or less: {'met' if worst <= TARGET else 'NOT met'}")
    held = [same for _, name, _, _, _, _, same in rows if name == "default" and same is not None]
    if held:
        print(f"default settings against idle at the threads they take when busy: worst {max(held):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
