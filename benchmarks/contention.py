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
per setting, --rounds times, so drifting load hits both alike. Prints decode ms/token p50 and
probe items/s for each case (medians over the rounds), and the slowdown busy/idle with a 95%
interval over the rounds (`intervals.py`; target: 1.5x or less for the default).

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
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.models.aliases import DEFAULT_ALIAS  # noqa: E402
from audit.threads import USER_WAIT_VARIABLES  # noqa: E402
from intervals import paired_interval, shown  # noqa: E402

COMPETITORS = {
    "loop": "while True: pass",
    # Computes with two spinning threads, as a prune or another inference job does.
    "torch": "import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\nwhile True: a @ a",
}
TARGET = 1.5
median = statistics.median


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


def slowdown(slow: list[float], fast: list[float]) -> tuple[float, float, float]:
    """median(slow) / median(fast) (times, or rates the other way round), with its interval over
    the rounds: each round's idle and busy cases ran one after the other, so they are paired."""
    return paired_interval(lambda a, b: median(a) / median(b), slow, fast)


def target_verdict(ratio: tuple[float, float, float], rounds: int) -> str:
    value, _, high = ratio
    if value > TARGET:
        return "NOT met"
    if rounds < 2:
        return "met (one round: no interval)"
    return "met, the whole interval within it" if high <= TARGET else f"met by the median only (the interval reaches {high:.2f}x)"


def in_turns(measure, extra: list[str], env: dict[str, str], args: argparse.Namespace, held: list[str] | None,
             held_follows_busy: bool) -> tuple[list[float], list[float], list[float], str]:
    """--rounds turns of one figure: idle, then busy, then (for the default) idle at the threads
    `held` gives, which for profile are the threads it took when busy. Returns the three lists
    and the threads taken idle / busy."""
    idle, busy, same = [], [], []
    for _ in range(args.rounds):
        value, idle_threads = measure(extra, env, args)
        idle.append(value)
        value, busy_threads = with_competitors(args.competitor, args.competitors, lambda: measure(extra, env, args))
        busy.append(value)
        if held and held_follows_busy and busy_threads:
            held = ["--threads", str(busy_threads)]
        if held:
            same.append(measure(held, env, args)[0])
    return idle, busy, same, f"{idle_threads} / {busy_threads}"


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
    parser.add_argument("--rounds", type=int, default=3, help="idle and busy cases per setting, in turns (default 3)")
    parser.add_argument("--only", choices=("profile", "probe"), help="measure one of the two")
    parser.add_argument("--wait-sweep", action="store_true", help="also every core under shorter spins and a passive wait")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    cores = os.cpu_count() or 1

    rows = []
    # The threads the default takes with the competitors running: the cores they leave free.
    busy_default_threads = max(1, cores - args.competitors)
    for name, (extra, env) in settings(cores, args.wait_sweep).items():
        held = ["--threads", str(busy_default_threads)] if name == "default" else None
        if args.only != "probe":
            idle, busy, same, threads = in_turns(decode_ms, extra, env, args, held, held_follows_busy=True)
            rows.append(("profile decode ms/token", name, idle, busy, slowdown(busy, idle), threads,
                         median(busy) / median(same) if same else None))
        if args.only != "profile":
            idle, busy, same, threads = in_turns(probe_rate, extra, env, args, held, held_follows_busy=False)
            rows.append(("probe items/s", name, idle, busy, slowdown(idle, busy), threads,
                         median(same) / median(busy) if same else None))

    print(f"{args.model}: {cores} cores, {args.competitors} competing '{args.competitor}' process(es), {args.rounds} round(s) of "
          f"each case; slowdown = busy time / idle time, medians over the rounds, with a 95% interval over them")
    print(f"{'figure':<24} {'setting':<21} {'idle':>8} {'busy':>8} {'slowdown':<34} {'threads idle / busy':<20} busy / idle at busy threads")
    for figure, name, idle, busy, ratio, threads, same in rows:
        print(f"{figure:<24} {name:<21} {median(idle):>8.1f} {median(busy):>8.1f} {shown(*ratio):<34} {threads:<20} "
              f"{'' if same is None else f'{same:.2f}x'}")
    defaults = [ratio for _, name, _, _, ratio, _, _ in rows if name == "default"]
    worst = max(defaults)
    print(f"default settings: worst slowdown {shown(*worst)}, target {TARGET:.1f}x or less: {target_verdict(worst, args.rounds)}")
    held = [same for _, name, _, _, _, _, same in rows if name == "default" and same is not None]
    if held:
        print(f"default settings against idle at the threads they take when busy: worst {max(held):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
