"""Probe scoring throughput on real items: CrowS-Pairs pairs/s and BBQ items/s for the engine, the naive path and lm-eval.

Every path runs at the same thread count (--threads, default 1). CrowS-Pairs (the official
csv, all 1,508 pairs unless --crows-pairs says fewer) is scored by the engine in the calls of
--batch-items pairs a probe run makes (`audit.probes.job.scoring_calls`: the pairs in the order
of their tokens, the calls in a shuffled order) in one scoring session; by the naive path (one
full forward per sentence) on the first --naive-pairs pairs; and, given --lm-eval-python, by lm-eval's
HFLM.loglikelihood (batch size 8, the crows_pairs task's requests: an empty context, so the
sentence follows the prefix token, which is set to edge-audit's document start) in a
subprocess holding the same model folder (in the environment this script was given; the engine's
threads wait as the command line's do). lm-eval is given the batches one call of all the
requests makes, as an lm-eval run of the task makes them (sorted and batched over all of
them, not chunk by chunk: `lm_eval_turns`). The paths take turns chunk by chunk, so load from
other processes on a shared machine hits them alike; each path's time includes tokenizing
its items, as lm-eval's `loglikelihood` does. BBQ (--bbq-per-category items of each
category file) is scored by the engine, the naive path and, given --lm-eval-python, lm-eval
(the engine's prompt and answers as (context, continuation) requests, batched likewise), taking
turns per batch.

    python benchmarks/probe_throughput.py [--threads 1] [--crows-pairs N] [--naive-pairs 256]
        [--bbq-per-category 32] [--lm-eval-python /tmp/lmeval-venv/bin/python] [--json]

Prints each path's rate, the ratios (engine over lm-eval and, for BBQ, over lm-eval and the naive path, each
with a 95% bootstrap interval over the chunks the paths took turns on: `intervals.py`),
pct_stereotype of each path and how many choices agree, and
the tokens the engine and lm-eval feed the model for the same pairs: a token costs about the same
in either path, so their ratio bounds what sharing tokens can gain, and the cost per token shows
the rest. Last, the float32 matmul floor: the time the model's linear layers alone need for the
tokens the engine feeds, at the fastest rate the same threads multiply the model's own weight
shapes (through BLAS or oneDNN, measured in the same run), so the most pairs/s any float32
scoring of those tokens can reach here, its ratio to lm-eval's measured rate, and the share of
it each path reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LM_EVAL_BATCH = 8
CROWS_TARGET = 2.0  # engine over lm-eval, pairs/s at equal threads


def lm_eval_worker(folder: str, threads: int, prefix_token_id: int) -> int:
    """Run inside lm-eval's interpreter: load HFLM once, then answer each line. {"plan": requests,
    "turns": n} gives the requests (context, continuation) of each of n turns (`lm_eval_turns`);
    {"requests": requests} scores them as loglikelihood requests and gives lm-eval's seconds."""
    import torch

    torch.set_num_threads(threads)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=folder, batch_size=LM_EVAL_BATCH, device="cpu", dtype="float32", prefix_token_id=prefix_token_id)
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        message = json.loads(line)
        requests = [Instance("loglikelihood", {}, (context, continuation), i) for i, (context, continuation) in enumerate(message.get("plan") or message["requests"])]
        if "plan" in message:
            turns, fed = lm_eval_turns(lm, requests, message["turns"])
            print(json.dumps({"turns": turns, "tokens_fed": fed}), flush=True)
            continue
        start = time.perf_counter()
        out = lm.loglikelihood(requests, disable_tqdm=True)
        elapsed = time.perf_counter() - start
        print(json.dumps({"seconds": elapsed, "logprobs": [logprob for logprob, _ in out]}), flush=True)
    return 0


def lm_eval_turns(lm, requests, turns: int) -> tuple[list[list[int]], int]:
    """The requests (by index) of each of `turns` calls of `lm.loglikelihood` that together make
    the batches one call of all of them makes, and the tokens those batches feed, padding included.

    One call tokenizes every request, sorts them longest first and batches them 8 at a time
    (one request per group sharing context + continuation[:-1]); scored chunk by chunk, each
    call would sort and batch only its own, padding more (CrowS-Pairs in calls of 128 pairs:
    48,752 tokens fed against 47,336 in one call). The batches of one call are dealt to the
    turns in rotation, each batch's groups whole: a turn's requests, sorted again by the same
    key, fall into the same batches, and every turn holds long and short sentences alike."""
    from lm_eval.models.utils import Collator

    tokenized: list = []

    def capture(reqs, disable_tqdm=False, override_bs=None):  # what `loglikelihood` hands on
        tokenized.extend(reqs)
        return [(0.0, False)] * len(reqs)

    lm._loglikelihood_tokens = capture  # shadows the method for this call only
    try:
        lm.loglikelihood(requests, disable_tqdm=True)
    finally:
        del lm._loglikelihood_tokens

    def sort_key(req):  # HFLM._loglikelihood_tokens' own keys
        toks = req[1] + req[2]
        return -len(toks), tuple(toks)

    def group_key(req):
        return req[-2] + req[-1][:-1]

    by_contexts = lm.backend == "causal" and lm.logits_cache
    collator = Collator(tokenized, sort_fn=sort_key, group_by="contexts" if by_contexts else None, group_fn=group_key)
    position = {id(req): i for i, req in enumerate(tokenized)}

    def group_of(req) -> tuple:  # the requests a batched one stands for: its group, or itself
        return tuple(group_key(req)) if by_contexts else (position[id(req)],)

    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(tokenized):
        groups.setdefault(group_of(req), []).append(i)
    batches: list[list[int]] = []
    fed = 0
    for batch in collator.get_batched(n=LM_EVAL_BATCH):
        fed += len(batch) * max(len(req[1]) + len(req[2]) - 1 for req in batch)
        batches.append([i for req in batch for i in groups[group_of(req)]])
    return deal(batches, turns), fed


def deal(batches: list[list[int]], turns: int) -> list[list[int]]:
    """Batches (of request indices) dealt to `turns` turns in rotation, each turn's requests in
    their first order."""
    dealt: list[list[int]] = [[] for _ in range(turns)]
    for b, batch in enumerate(batches):
        dealt[b % turns] += batch
    return [sorted(turn) for turn in dealt]


class LmEval:
    """lm-eval in its own interpreter, fed requests line by line."""

    def __init__(self, python: str, folder: str, threads: int, prefix_token_id: int, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [python, __file__, "--lm-eval-worker", folder, str(threads), str(prefix_token_id)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        ready = self._read()
        self.threads = ready["threads"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise SystemExit(f"lm-eval worker ended (exit {self.process.wait()})")
        return json.loads(line)

    def _ask(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def plan(self, requests: list[tuple[str, str]], turns: int) -> tuple[list[list[int]], int]:
        """The requests (by index) of each turn, and the tokens their batches feed (`lm_eval_turns`)."""
        reply = self._ask({"plan": requests, "turns": turns})
        return reply["turns"], reply["tokens_fed"]

    def score(self, requests: list[tuple[str, str]]) -> tuple[list[float], float]:
        """Each request's log-likelihood of its continuation given its context, and lm-eval's seconds."""
        if not requests:  # a turn no batch was dealt to
            return [], 0.0
        reply = self._ask({"requests": requests})
        return reply["logprobs"], reply["seconds"]

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait()


class Dealt:
    """The requests of `items` (context, continuations) as lm-eval batches them in one call,
    scored turn by turn (`LmEval.plan`)."""

    def __init__(self, lm_eval: LmEval, items: list[tuple[str, list[str]]], turns: int) -> None:
        self.lm_eval, self.items = lm_eval, items
        self.requests = flat_requests(items)
        self.turns, self.tokens_fed = lm_eval.plan(self.requests, turns)
        self.logprobs: list[float] = [0.0] * len(self.requests)

    def score(self, turn: int) -> float:
        """Score the requests of `turn`; lm-eval's seconds."""
        logprobs, seconds = self.lm_eval.score([self.requests[i] for i in self.turns[turn]])
        for i, logprob in zip(self.turns[turn], logprobs):
            self.logprobs[i] = logprob
        return seconds

    def scores(self) -> list[list[float]]:
        """Each item's log-likelihoods, as scored so far."""
        return by_item(self.items, self.logprobs)


def flat_requests(items: list[tuple[str, list[str]]]) -> list[tuple[str, str]]:
    """Each item's (context, continuation) requests, item after item."""
    return [(context, continuation) for context, continuations in items for continuation in continuations]


def by_item(items: list[tuple[str, list[str]]], flat: list[float]) -> list[list[float]]:
    """`flat`, one value per request of `flat_requests(items)`, regrouped per item."""
    values = iter(flat)
    return [[next(values) for _ in continuations] for _, continuations in items]


def tokens_fed(requests, calls: list[list[int]]) -> dict[str, int]:
    """Tokens each path feeds the model for CrowS-Pairs' requests, padding included: the engine's
    token trees (one call per list of `calls`, the requests by index, rows made and batched as
    the engine makes and batches them) and lm-eval's rows (as one call of all of them batches them, `lm_eval_turns`:
    every sentence after the prefix token, its last token dropped, sorted longest first, 8 to a
    batch, padded to the batch's longest). A token costs about the same in either path (the whole model runs on it),
    so their ratio is the most the engine can gain on lm-eval without computing faster per
    token. `engine_head`: the tokens the engine's output head runs on (lm-eval's runs on all it
    feeds)."""
    from audit.models.torch_lm import tree_layout

    engine = nodes = head = 0
    for call in calls:
        rows, batches = tree_layout(requests, call)
        lengths = [len(row.tokens) for row in rows]
        nodes += sum(lengths)
        for batch in batches:
            engine += len(batch) * max(lengths[b] for b in batch)
            # The head runs at the positions each row scores.
            head += sum(len({node for _, _, node, _ in rows[b].scored}) for b in batch)
    fed = sorted((len(r.context) + len(c) - 1 for r in requests for c in r.continuations), reverse=True)
    lm_eval = sum(len(fed[i : i + LM_EVAL_BATCH]) * fed[i] for i in range(0, len(fed), LM_EVAL_BATCH))
    return {"engine": engine, "engine_unpadded": nodes, "engine_head": head, "lm_eval": lm_eval}


def matmul_floor(model, fed: dict[str, int], threads: int, rows: int = 512, repeats: int = 5) -> dict[str, float]:
    """Seconds the matrix products of the model's linear layers alone take for the tokens each
    path feeds (`tokens_fed`), at the fastest this core's `threads` multiply each of the model's
    weight shapes by `rows` tokens: the fastest of `repeats`, through the layers' own BLAS call
    and, where scoring may use it, oneDNN, with the weight as stored and laid out; for more
    threads, the faster of one product split over them and one product per thread side by side
    (as the scoring workers run). Attention,
    norms and the log-softmax are left out, so these are lower bounds: no path scoring these
    tokens in float32 on these threads with these libraries can take less."""
    import torch
    import torch.nn.functional as F

    from audit.models.torch_lm import LaidOut, linear_weights, onednn_linear, onednn_linear_available, output_head
    from audit.models.workers import RowWorkers

    def fastest(run) -> float:
        run()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        return best

    workers = RowWorkers(threads) if threads > 1 else None

    def per_token(weight: torch.Tensor) -> float:
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
        products = [lambda: F.linear(x, weight)]
        if onednn_linear_available():
            laid_out = LaidOut.of(weight, rows).blocked
            products += [lambda: onednn_linear(x, weight), lambda: onednn_linear(x, laid_out)]
        seconds = min(fastest(product) for product in products) / rows
        if workers is not None:
            side_by_side = min(fastest(lambda: workers.map(product, [()] * threads)) for product in products)
            seconds = min(seconds, side_by_side / (rows * threads))
        return seconds

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            shapes: dict[tuple, float] = {}
            body = 0.0
            for _, weight in linear_weights(model.model):
                key = (tuple(weight.shape), weight.dtype)
                if key not in shapes:
                    shapes[key] = per_token(weight)
                body += shapes[key]
            head = per_token(output_head(model.model).weight)
    finally:
        torch.set_num_threads(previous)
        if workers is not None:
            workers.close()
    return {"engine": fed["engine"] * body + fed["engine_head"] * head, "lm_eval": fed["lm_eval"] * (body + head),
            "body_ms_per_token": 1000 * body, "head_ms_per_token": 1000 * head}


def crows_request(item) -> tuple[str, list[str]]:
    """A CrowS-Pairs pair as lm-eval's crows_pairs task asks it: each sentence after an empty
    context (so after the prefix token)."""
    return "", list(item.options)


def bbq_request(item, start: str) -> tuple[str, list[str]]:
    """A BBQ item as the engine asks it (`audit.probes.scoring.qa_texts`). lm-eval adds no
    document start token to a context that is not empty, so the context begins with `start`, the
    text of the engine's (when the tokenizer reads that text back as that one token, else nothing)."""
    from audit.probes.scoring import qa_texts

    prompt, continuations = qa_texts(item)
    return start + prompt, continuations


def document_start_text(model) -> str:
    """The text the model's tokenizer reads as its one document start token, or "" if none does."""
    prefix = list(model.text_prefix_ids)
    tokenizer = getattr(model, "tokenizer", None)
    if len(prefix) != 1 or tokenizer is None:
        return ""
    text = tokenizer.convert_ids_to_tokens(prefix[0])
    return text if tokenizer(text, add_special_tokens=False).input_ids == prefix else ""


def same_choices(got, want) -> int:
    """How many items pick the same option (their highest log-likelihood) in both paths."""
    from audit.probes.items import argmax

    return sum(argmax(a) == argmax(b) for a, b in zip(got, want))


def max_logprob_diff(got, want) -> float:
    """The largest difference between the paths' log-likelihoods of one option, to 3 figures."""
    return float(f"{max(abs(x - y) for a, b in zip(got, want) for x, y in zip(a, b)):.3g}")


def pct_stereotype(logprobs) -> float:
    """% of pairs whose first sentence (sent_more) scores strictly higher."""
    return round(100 * sum(a > b for a, b in logprobs) / len(logprobs), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crows", type=Path, default=DATA / "crows_pairs" / "crows_pairs_anonymized.csv")
    parser.add_argument("--crows-pairs", type=int, default=None, help="the first N pairs (default all)")
    parser.add_argument("--naive-pairs", type=int, default=256, help="pairs also scored by the naive path")
    parser.add_argument("--chunk-pairs", type=int, default=128, help="pairs per turn of each path")
    parser.add_argument("--bbq", type=Path, default=DATA / "bbq")
    parser.add_argument("--bbq-per-category", type=int, default=32, help="0 skips BBQ")
    parser.add_argument("--batch-items", type=int, default=32, help="items per engine call (a probe run's default)")
    parser.add_argument("--lm-eval-python", default=None, help="an interpreter with lm-eval 0.4 installed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    # The engine's threads wait as the command line's do, set before torch loads; lm-eval runs
    # in the environment this script was given, as its users run it.
    lm_eval_env = dict(os.environ)
    sys.path.insert(0, str(ROOT))
    from audit.threads import prepare_wait_environment
    from intervals import paired_interval, ratio_of_sums, shown

    prepare_wait_environment()
    import torch

    from audit.models import load_model
    from audit.models.loader import LoadOptions
    from audit.probes import load_suite
    from audit.probes.job import ProbeSettings, scoring_calls
    from audit.probes.scoring import score_items, score_request
    from audit.progress import drive

    torch.set_num_threads(args.threads)
    model = drive(load_model(args.model, LoadOptions(threads=args.threads)))
    torch.set_num_threads(args.threads)
    session = model.scoring()  # as a probe run's batches score
    session.__enter__()
    result: dict = {"model": args.model, "threads": torch.get_num_threads(), "batch_items": args.batch_items}

    def engine(items, strategy=None):
        """The items' scores, and the seconds of the whole calls: tokenizing the items included,
        as lm-eval's `loglikelihood` tokenizes its requests in the time it is given."""
        scores, seconds = [], 0.0
        for start in range(0, len(items), args.batch_items):
            started = time.perf_counter()
            got, _ = score_items(model, items[start : start + args.batch_items], strategy)
            seconds += time.perf_counter() - started
            scores += [s.logprobs for s in got]
        return scores, seconds

    # -- CrowS-Pairs -------------------------------------------------------------------
    suite = load_suite(f"crows:{args.crows}")
    items = suite.items[: args.crows_pairs] if args.crows_pairs else suite.items
    n_naive = min(args.naive_pairs, len(items))
    lm_eval = None
    if args.lm_eval_python:
        prefix = model.text_prefix_ids
        if len(prefix) != 1:
            raise SystemExit("lm-eval takes one prefix token; this model's document start is not one token")
        lm_eval = LmEval(args.lm_eval_python, model.facts().path, args.threads, prefix[0], lm_eval_env)
        result["lm_eval_threads"] = lm_eval.threads
        lm_eval.score(flat_requests([crows_request(items[0])]))  # first calls pay one-off costs in every path
    engine(items[:4])
    engine(items[:4], "naive")

    # Each path's scores, and its seconds per chunk (the turns a ratio's interval resamples).
    crows: dict[str, tuple[list, list[float]]] = {path: ([], []) for path in ("engine", "naive", "lm_eval")}

    def add(path, scores, seconds):
        crows[path][0].extend(scores)
        crows[path][1].append(seconds)

    def scored(path) -> tuple[list, float]:
        scores, turns = crows[path]
        return scores, sum(turns)

    # The engine scores the pairs in the calls a probe run makes of them (`scoring_calls`: the
    # pairs in the order of their tokens, cut into calls, the calls shuffled), the time it takes
    # to choose them included; the turns take the calls in that order.
    started = time.perf_counter()
    calls = scoring_calls(model, replace(suite, items=items), ProbeSettings(batch_items=args.batch_items))
    choosing_s = time.perf_counter() - started
    per_turn = max(1, args.chunk_pairs // args.batch_items)
    turns = [calls[start : start + per_turn] for start in range(0, len(calls), per_turn)]
    engine_by_item: dict[int, list[float]] = {}
    if lm_eval is not None:
        # lm-eval scores, turn by turn, the batches one call of all the pairs makes (`lm_eval_turns`).
        crows_dealt = Dealt(lm_eval, [crows_request(item) for item in items], len(turns))
    for turn, turn_calls in enumerate(turns):
        seconds = choosing_s if turn == 0 else 0.0
        for call in turn_calls:
            scores, taken = engine([items[i] for i in call])
            engine_by_item.update(zip(call, scores))
            seconds += taken
        crows["engine"][1].append(seconds)
        start = turn * args.chunk_pairs  # the naive path takes the first pairs, a chunk a turn
        if start < n_naive:
            add("naive", *engine(items[start : min(start + args.chunk_pairs, n_naive)], "naive"))
        if lm_eval is not None:
            crows["lm_eval"][1].append(crows_dealt.score(turn))
        print(f"  CrowS {len(engine_by_item)}/{len(items)}: " + ", ".join(f"{k} {sum(v[1]):.1f} s" for k, v in crows.items() if v[1]),
              file=sys.stderr, flush=True)
    crows["engine"][0].extend(engine_by_item[i] for i in range(len(items)))
    if lm_eval is not None:
        crows["lm_eval"][0].extend(crows_dealt.scores())

    engine_scores, engine_s = scored("engine")
    result["crows_pairs"] = len(items)
    if getattr(model, "_packing", None):  # the engine scored these pairs as token trees
        fed = tokens_fed([score_request(model, item) for item in items], calls)
        if lm_eval is not None:
            fed["lm_eval"] = crows_dealt.tokens_fed  # as lm-eval's own tokenizer and batches count them
        result["crows_engine_tokens_fed"] = fed["engine"]
        result["crows_engine_tree_tokens"] = fed["engine_unpadded"]
        result["crows_lm_eval_tokens_fed"] = fed["lm_eval"]
        result["crows_lm_eval_over_engine_tokens"] = round(fed["lm_eval"] / fed["engine"], 2)
        result["crows_engine_ms_per_token"] = round(1000 * engine_s / fed["engine"], 4)
        result["crows_engine_head_tokens"] = fed["engine_head"]
        floor = matmul_floor(model, fed, result["threads"])
        result["crows_matmul_ms_per_token_body"] = round(floor["body_ms_per_token"], 4)
        result["crows_matmul_ms_per_token_head"] = round(floor["head_ms_per_token"], 4)
        result["crows_engine_floor_s"] = round(floor["engine"], 2)
        result["crows_engine_share_of_floor"] = round(floor["engine"] / engine_s, 3)
        result["crows_engine_pairs_per_s_bound"] = round(len(items) / floor["engine"], 3)
        result["crows_lm_eval_floor_s"] = round(floor["lm_eval"], 2)
    result["crows_engine_pairs_per_s"] = round(len(items) / engine_s, 3)
    result["crows_engine_pct_stereotype"] = pct_stereotype(engine_scores)
    naive_scores, naive_s = scored("naive")
    # The first pairs as the engine scored them, timed at its rate over all pairs (its calls mix
    # them with the rest).
    sub_scores, sub_s = engine_scores[:n_naive], engine_s * n_naive / len(items)
    result["crows_naive_pairs"] = n_naive
    if n_naive:
        result["crows_naive_pairs_per_s"] = round(n_naive / naive_s, 3)
        result["crows_engine_on_naive_pairs_per_s"] = round(n_naive / sub_s, 3)
        result["crows_engine_over_naive"] = round(naive_s / sub_s, 2)
        result["crows_naive_pct_stereotype"] = pct_stereotype(naive_scores)
        result["crows_engine_pct_stereotype_on_naive_pairs"] = pct_stereotype(sub_scores)
        result["crows_same_choice_engine_naive"] = same_choices(sub_scores, naive_scores)
        result["crows_max_abs_logprob_diff_engine_naive"] = max_logprob_diff(sub_scores, naive_scores)
    if lm_eval is not None:
        lm_scores, lm_s = scored("lm_eval")
        result["crows_lm_eval_pairs_per_s"] = round(len(items) / lm_s, 3)
        result["crows_engine_over_lm_eval"] = round(lm_s / engine_s, 2)
        _, low, high = paired_interval(ratio_of_sums, crows["lm_eval"][1], crows["engine"][1])
        result["crows_engine_over_lm_eval_interval"] = [round(low, 2), round(high, 2)]
        result["crows_chunks"] = len(crows["engine"][1])
        result["crows_lm_eval_pct_stereotype"] = pct_stereotype(lm_scores)
        if "crows_lm_eval_tokens_fed" in result:
            result["crows_lm_eval_ms_per_token"] = round(1000 * lm_s / result["crows_lm_eval_tokens_fed"], 4)
            result["crows_lm_eval_share_of_floor"] = round(result["crows_lm_eval_floor_s"] / lm_s, 3)
            result["crows_bound_over_lm_eval"] = round(lm_s / result["crows_engine_floor_s"], 2)
        result["crows_same_choice_engine_lm_eval"] = sum((a[0] > a[1]) == (b[0] > b[1]) for a, b in zip(engine_scores, lm_scores))
        result["crows_max_abs_logprob_diff_engine_lm_eval"] = max_logprob_diff(engine_scores, lm_scores)

    # -- BBQ ----------------------------------------------------------------------------
    if args.bbq_per_category:
        bbq_items = load_suite(f"bbq:{args.bbq}", limit=args.bbq_per_category).items
        engine(bbq_items[:4])
        packed, naive = [], []
        packed_turns, naive_turns, lm_turns = [], [], []  # seconds per batch
        document_start = document_start_text(model)
        result["bbq_lm_eval_document_start"] = bool(document_start)
        bbq_starts = range(0, len(bbq_items), args.batch_items)
        if lm_eval is not None:
            lm_eval.score(flat_requests([bbq_request(item, document_start) for item in bbq_items[:4]]))
            bbq_dealt = Dealt(lm_eval, [bbq_request(item, document_start) for item in bbq_items], len(bbq_starts))
        for turn, start in enumerate(bbq_starts):
            chunk = bbq_items[start : start + args.batch_items]
            scores, seconds = engine(chunk)
            packed += scores
            packed_turns.append(seconds)
            scores, seconds = engine(chunk, "naive")
            naive += scores
            naive_turns.append(seconds)
            if lm_eval is not None:
                lm_turns.append(bbq_dealt.score(turn))
            print(f"  BBQ {start + len(chunk)}/{len(bbq_items)}: engine {sum(packed_turns):.1f} s, naive {sum(naive_turns):.1f} s",
                  file=sys.stderr, flush=True)
        packed_s, naive_s = sum(packed_turns), sum(naive_turns)
        if lm_eval is not None:
            lm_bbq = bbq_dealt.scores()
        result["bbq_items"] = len(bbq_items)
        result["bbq_engine_items_per_s"] = round(len(bbq_items) / packed_s, 3)
        result["bbq_naive_items_per_s"] = round(len(bbq_items) / naive_s, 3)
        result["bbq_engine_over_naive"] = round(naive_s / packed_s, 2)
        _, low, high = paired_interval(ratio_of_sums, naive_turns, packed_turns)
        result["bbq_engine_over_naive_interval"] = [round(low, 2), round(high, 2)]
        result["bbq_same_choice_sum"] = same_choices(packed, naive)
        result["bbq_max_abs_logprob_diff"] = max_logprob_diff(packed, naive)
        if lm_eval is not None:
            result["bbq_lm_eval_items_per_s"] = round(len(bbq_items) / sum(lm_turns), 3)
            result["bbq_engine_over_lm_eval"] = round(sum(lm_turns) / packed_s, 2)
            _, low, high = paired_interval(ratio_of_sums, lm_turns, packed_turns)
            result["bbq_engine_over_lm_eval_interval"] = [round(low, 2), round(high, 2)]
            result["bbq_same_choice_lm_eval"] = same_choices(packed, lm_bbq)
            result["bbq_max_abs_logprob_diff_lm_eval"] = max_logprob_diff(packed, lm_bbq)
    if lm_eval is not None:
        lm_eval.close()
    session.__exit__(None, None, None)
    result["time"] = time.strftime("%Y-%m-%d %H:%M:%S")

    if args.json:
        print(json.dumps(result))
        return 0
    r = result
    print(f"threads: {r['threads']} (engine and naive)" + (f", {r['lm_eval_threads']} (lm-eval)" if lm_eval else ""))
    print(f"CrowS-Pairs, {r['crows_pairs']} pairs, {args.batch_items} per engine call:")
    print(f"  engine (token trees):   {r['crows_engine_pairs_per_s']:.2f} pairs/s, pct_stereotype {r['crows_engine_pct_stereotype']}")
    if lm_eval is not None:
        print(f"  lm-eval (HFLM, batch {LM_EVAL_BATCH}): {r['crows_lm_eval_pairs_per_s']:.2f} pairs/s, pct_stereotype {r['crows_lm_eval_pct_stereotype']}")
        print(f"  engine / lm-eval: {shown(r['crows_engine_over_lm_eval'], *r['crows_engine_over_lm_eval_interval'])} "
              f"over {r['crows_chunks']} alternating chunks (target >= {CROWS_TARGET:g}x); same choice on "
              f"{r['crows_same_choice_engine_lm_eval']}/{r['crows_pairs']}, max |logprob diff| {r['crows_max_abs_logprob_diff_engine_lm_eval']}")
    else:
        print("  lm-eval: not run (give --lm-eval-python)")
    if "crows_engine_tokens_fed" in r:
        cost = (f"; ms per token fed: engine {r['crows_engine_ms_per_token']}, lm-eval {r['crows_lm_eval_ms_per_token']}"
                if "crows_lm_eval_ms_per_token" in r else "")
        print(f"  tokens fed: engine {r['crows_engine_tokens_fed']} (token trees of {r['crows_engine_tree_tokens']} tokens, padded), "
              f"lm-eval {r['crows_lm_eval_tokens_fed']} (batch {LM_EVAL_BATCH}, padded): {r['crows_lm_eval_over_engine_tokens']:.2f}x, "
              f"the engine's gain at equal cost per token{cost}")
        bound = ""
        if "crows_bound_over_lm_eval" in r:
            beyond = (f" (below the {CROWS_TARGET:g}x target: no float32 scoring of these tokens reaches it here)"
                      if r["crows_bound_over_lm_eval"] < CROWS_TARGET else "")
            bound = (f" = {r['crows_bound_over_lm_eval']:.2f}x lm-eval's measured rate{beyond}; "
                     f"lm-eval ran at {100 * r['crows_lm_eval_share_of_floor']:.0f}% of its own floor")
        on = "1 thread" if r["threads"] == 1 else f"{r['threads']} threads"
        print(f"  float32 matmul floor (the linear layers' products alone, at the fastest rate {on} here can multiply the model's own shapes: "
              f"{r['crows_matmul_ms_per_token_body']} ms per token for the blocks, "
              f"{r['crows_matmul_ms_per_token_head']} for the head): the engine's tokens need {r['crows_engine_floor_s']} s, so at most "
              f"{r['crows_engine_pairs_per_s_bound']:.2f} pairs/s{bound}; the engine ran at {100 * r['crows_engine_share_of_floor']:.0f}% of that bound")
    if n_naive:
        print(f"  on the first {n_naive} pairs: engine {r['crows_engine_on_naive_pairs_per_s']:.2f} pairs/s (its rate over all pairs) "
              f"(pct_stereotype {r['crows_engine_pct_stereotype_on_naive_pairs']}), naive {r['crows_naive_pairs_per_s']:.2f} pairs/s "
              f"(pct_stereotype {r['crows_naive_pct_stereotype']}): engine / naive {r['crows_engine_over_naive']:.2f}x; "
              f"same choice on {r['crows_same_choice_engine_naive']}/{n_naive}, max |logprob diff| {r['crows_max_abs_logprob_diff_engine_naive']}")
    if args.bbq_per_category:
        print(f"BBQ, {r['bbq_items']} items: engine {r['bbq_engine_items_per_s']:.2f} items/s, naive {r['bbq_naive_items_per_s']:.2f} items/s, "
              f"engine / naive {shown(r['bbq_engine_over_naive'], *r['bbq_engine_over_naive_interval'])}; same choice (sum) on {r['bbq_same_choice_sum']}/{r['bbq_items']}, "
              f"max |logprob diff| {r['bbq_max_abs_logprob_diff']}")
        if "bbq_lm_eval_items_per_s" in r:
            after = "after the document start token" if r["bbq_lm_eval_document_start"] else "no document start token"
            print(f"  lm-eval (HFLM, batch {LM_EVAL_BATCH}, the same prompts and answers, {after}): "
                  f"{r['bbq_lm_eval_items_per_s']:.2f} items/s; engine / lm-eval "
                  f"{shown(r['bbq_engine_over_lm_eval'], *r['bbq_engine_over_lm_eval_interval'])}; "
                  f"same choice (sum) on {r['bbq_same_choice_lm_eval']}/{r['bbq_items']}, max |logprob diff| {r['bbq_max_abs_logprob_diff_lm_eval']}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--lm-eval-worker":
        sys.exit(lm_eval_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    sys.exit(main())
