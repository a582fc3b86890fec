"""How evenly a probe's batches share out between scoring workers, on more cores than this machine has.

A PyTorch model scores a batch's rows in workers of one thread each (`audit.models.workers`).
Rows are atomic and a batch is padded to its widest row, so a batch of 2 rows leaves workers
beyond 2 waiting, and 4 rows on 3 workers give one of them 2 rows. On more than 2 workers the
engine lets a worker done with its rows take the next batch's
(`TorchLanguageModel._finish_in_order`; on 2, batches made for 2 share out evenly); this script
says what that is worth for 2, 3 and 4 workers on real items without needing those cores. It
builds each call's batches with the engine's own layout (`packed_batch_shapes`, calls of
--batch-items items, a probe's default) and counts the padded tokens each worker computes,
a forward's cost being about proportional to them:

- one at a time: every batch waits for its slowest worker before the next starts (before);
- computing ahead: each part goes to the worker that frees first, and a call ends when the
  last part is done (now).

A batch of one row is computed on the model's own threads after the workers are idle, in
both cases, and counted as its tokens over the workers. Prints, per suite and worker count,
the slowest worker's padded tokens over an even split of the same tokens (1.00 is perfect
balance) for both, and their ratio: the scoring time computing ahead saves where a forward's
cost follows its tokens. The float products are the same either way: the scores do not change.

    python benchmarks/worker_balance.py [--suites builtin crows bbq] [--batch-items 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SUITES = {"builtin": "builtin", "crows": f"crows:{DATA / 'crows_pairs' / 'crows_pairs_anonymized.csv'}", "bbq": f"bbq:{DATA / 'bbq'}"}


def one_at_a_time(calls: list[list[tuple[int, int]]], workers: int) -> float:
    """The slowest worker's tokens summed over batches, each batch waiting for the last."""
    from audit.models.workers import row_bounds

    return sum(width / workers if rows == 1 else max(end - start for start, end in row_bounds(rows, workers)) * width
               for shapes in calls for rows, width in shapes)


def computing_ahead(calls: list[list[tuple[int, int]]], workers: int) -> float:
    """The tokens until each call's last part is done, parts going to the worker that frees first."""
    from audit.models.workers import row_bounds

    total = 0.0
    for shapes in calls:
        free = [0.0] * workers
        for rows, width in shapes:
            if rows == 1:
                free = [max(free) + width / workers] * workers
                continue
            for start, end in row_bounds(rows, workers):
                first = free.index(min(free))
                free[first] += (end - start) * width
        total += max(free)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="whose tokenizer makes the requests")
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--batch-items", type=int, default=32, help="items per scoring call (a probe's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from audit.models import load_model
    from audit.models.loader import LoadOptions
    from audit.models.torch_lm import packed_batch_shapes
    from audit.probes import load_suite
    from audit.probes.scoring import score_request
    from audit.progress import drive

    model = drive(load_model(args.model, LoadOptions(threads=1)))
    results = []
    for name in args.suites:
        items = load_suite(SUITES[name]).items
        requests = [score_request(model, item) for item in items]
        calls = [packed_batch_shapes(requests[start : start + args.batch_items]) for start in range(0, len(requests), args.batch_items)]
        tokens = sum(rows * width for shapes in calls for rows, width in shapes)
        row = {"suite": name, "items": len(items), "batches": sum(len(shapes) for shapes in calls), "padded_tokens": tokens}
        for workers in (2, 3, 4):
            even = tokens / workers
            before, now = one_at_a_time(calls, workers), computing_ahead(calls, workers)
            row[f"workers_{workers}"] = {"one_at_a_time": round(before / even, 3), "computing_ahead": round(now / even, 3),
                                         "time_ratio": round(now / before, 3)}
        results.append(row)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"slowest worker's padded tokens over an even split, calls of {args.batch_items} items "
          "(one batch at a time -> computing ahead; time ratio)")
    for row in results:
        cells = [f"{w} workers {row[f'workers_{w}']['one_at_a_time']:.2f} -> {row[f'workers_{w}']['computing_ahead']:.2f} "
                 f"({row[f'workers_{w}']['time_ratio']:.2f}x)" for w in (2, 3, 4)]
        print(f"  {row['suite']:8} {row['items']:5} items, {row['batches']} batches: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
