"""How fast the app answers keys while its jobs compute: milliseconds from a key sent to the app
to its screen switch running, during a prune and during a probe, in one run.

The app runs headless (Textual's test driver, 80 x 24) on a model (the default one unless
--model), with its live device feed. A wanda prune with --nsamples x --seqlen calibration tokens
runs while --keys screen switches are sent (one every 0.1 s), then is cancelled; a probe of the
built-in suite runs while as many are sent, then is cancelled. Prints each latency, their
median and largest, and the target: every key within 100 ms.

    python benchmarks/app_keys.py [--model M] [--keys 8] [--nsamples 64] [--seqlen 128]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.threads import prepare_wait_environment  # noqa: E402

prepare_wait_environment()  # as the app's own command sets it, before the inference libraries load

from audit.models.aliases import DEFAULT_ALIAS  # noqa: E402
from tests.app_support import press_while_busy, settle, timed_keys, type_into, wait_for  # noqa: E402
from tui.app import create_app  # noqa: E402

TARGET_MS = 100.0
SIZE = (80, 24)


async def scenario(args: argparse.Namespace, store: Path) -> dict[str, list[float]]:
    app = create_app(args.model, store=str(store))
    keys = [("4", "2")[i % 2] for i in range(args.keys)]
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, timeout=600, until=lambda: app.session is not None)
        await pilot.press("2")
        await type_into(pilot, "#nsamples", str(args.nsamples))
        await type_into(pilot, "#seqlen", str(args.seqlen))
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.job is not None and app.job.latest is not None and "block" in app.job.latest.message, 600)
        prune = await timed_keys(pilot, keys)
        await press_while_busy(pilot, "escape", lambda: app.job is None, 600)
        await settle(pilot, app, timeout=600)
        await pilot.press("3")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.job is not None and app.job.latest is not None and app.job.latest.stage == "probe", 600)
        probe = await timed_keys(pilot, [("4", "3")[i % 2] for i in range(args.keys)])
        await press_while_busy(pilot, "escape", lambda: app.job is None, 600)
        await settle(pilot, app, timeout=600)
    return {"prune": prune, "probe": probe}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_ALIAS)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        found = asyncio.run(scenario(args, Path(scratch) / "results.db"))
    every = found["prune"] + found["probe"]
    for job, latencies in found.items():
        shown = ", ".join(f"{x:.1f}" for x in latencies) or "none: the job ended first"
        print(f"key latency during the {job}, ms: {shown}")
    if not every:
        print("no key was sent while a job ran")
        return 1
    largest = max(every)
    print(f"median {statistics.median(every):.1f} ms, largest {largest:.1f} ms over {len(every)} keys; "
          f"target every key within {TARGET_MS:.0f} ms: {'met' if largest < TARGET_MS else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
