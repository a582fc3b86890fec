"""Sentence pairs scored as token trees give what one plain forward of each whole sentence gives."""

import pytest
import torch

from audit.models import load_model
from audit.models.interface import ScoreRequest
from audit.models.torch_lm import MIN_SHARED_TOKENS, TREE_BATCH_TOKENS, head_in_pieces, tree_batches, tree_row, tree_rows
from audit.probes.crows import load_crows
from audit.probes.items import argmax
from audit.probes.scoring import sentence_request
from audit.progress import drive
from tests.conftest import SHARED_DATA, benchmark_script

CROWS = SHARED_DATA / "crows_pairs" / "crows_pairs_anonymized.csv"


def test_a_pair_shares_its_tokens_up_to_the_first_that_differs():
    requests = [
        ScoreRequest((0,), ((5, 6, 7), (5, 8, 7))),
        ScoreRequest((0,), ((9,),)),
    ]
    row = tree_row(requests, [0, 1])
    # 0 5 6 [7] and 0 5 8 [7] and 0 [9]: the last tokens predict nothing and are not fed;
    # the document start and "5" are fed once. Four tokens instead of 4 + 4 + 2.
    assert row.tokens == (0, 5, 6, 8)
    assert row.parents == (-1, 0, 1, 1)
    assert row.depths == (0, 1, 2, 2)
    assert row.scored == (
        (0, 0, 0, 5), (0, 0, 1, 6), (0, 0, 2, 7),
        (0, 1, 0, 5), (0, 1, 1, 8), (0, 1, 3, 7),
        (1, 0, 0, 9),
    )


def test_a_longer_context_is_fed_but_not_scored():
    row = tree_row([ScoreRequest((0, 1, 2), ((3,), (4, 5)))], [0])
    assert row.tokens == (0, 1, 2, 4)
    # The context's own tokens predict nothing that is scored.
    assert row.scored == ((0, 0, 2, 3), (0, 1, 2, 4), (0, 1, 3, 5))


def test_tree_rows_hold_each_request_once_within_the_width():
    requests = [ScoreRequest((0,), ((i, 1, 2, 3), (i, 1, 4, 5))) for i in range(10, 30)]
    rows = tree_rows(requests, range(len(requests)), max_tokens=16)
    assert sorted({s[0] for row in rows for s in row.scored}) == list(range(20))
    assert all(len(row.tokens) <= 16 for row in rows)
    # Each pair feeds 4 tokens of its own (i 1 2 4) after the shared start: 3 pairs to a row.
    assert [len(row.tokens) for row in rows] == [13] * 6 + [9]
    alone = tree_rows([ScoreRequest((0,), (tuple(range(3, 40)),))], [0], max_tokens=16)
    assert len(alone) == 1 and len(alone[0].tokens) == 37  # too long for a row: a row of its own


def test_tree_rows_come_out_about_as_wide_as_each_other():
    requests = [ScoreRequest((0,), ((i, 1, 2, 3), (i, 1, 4, 5))) for i in range(10, 15)]
    # Filled to 20 tokens, the rows would hold 4 pairs and 1 (17 and 5 tokens), and a batch of
    # both would be padded to 34. Two rows are needed either way; 3 pairs and 2 pad it to 26.
    rows = tree_rows(requests, range(len(requests)), max_tokens=20)
    assert [len(row.tokens) for row in rows] == [13, 9]
    assert [sorted({s[0] for s in row.scored}) for row in rows] == [[0, 1, 2], [3, 4]]
    # One row is one row, however narrow it could be.
    assert [len(row.tokens) for row in tree_rows(requests, range(4), max_tokens=20)] == [17]


def test_rows_come_in_a_multiple_of_the_workers_where_narrower_rows_allow():
    requests = [ScoreRequest((0,), ((i, 1, 2, 3), (i, 1, 4, 5))) for i in range(10, 30)]
    # 20 pairs of 4 tokens each after the shared start: 3 to a row of 16 makes 7 rows, which 2
    # workers share 4 and 3. Rows of 2 pairs (9 tokens) make 10: both workers busy throughout.
    assert len(tree_rows(requests, range(20), max_tokens=16)) == 7
    rows = tree_rows(requests, range(20), max_tokens=16, multiple=2)
    assert [len(row.tokens) for row in rows] == [9] * 10
    assert sorted({s[0] for row in rows for s in row.scored}) == list(range(20))
    # On 3 workers, 7 rows of 13 leave one worker 3 rows (39 tokens), 10 rows of 9 leave 4 (36).
    assert [len(row.tokens) for row in tree_rows(requests, range(20), max_tokens=16, multiple=3)] == [9] * 10
    assert len(tree_rows(requests, range(18), max_tokens=16, multiple=2)) == 6  # a multiple already
    # One request cannot make two rows: it keeps its one.
    assert len(tree_rows(requests, [0], max_tokens=16, multiple=2)) == 1


def test_tree_batches_share_out_evenly_between_workers():
    def rows_of(widths):
        return [tree_row([ScoreRequest((0,), (tuple(range(1000 * k, 1000 * k + w + 1)),))], [0]) for k, w in enumerate(widths)]

    rows = rows_of([100] * 7)
    # 512 tokens hold 5 rows of 100: 5 and 2, which 2 workers share 3 and 2, then 1 and 1.
    assert [len(b) for b in tree_batches(rows)] == [5, 2]
    assert [len(b) for b in tree_batches(rows, 2)] == [4, 3]  # the last batch: nothing follows it
    rows = rows_of([120, 110, 100, 100, 90, 90, 80, 60, 50])
    for multiple in (2, 3):
        batches = tree_batches(rows, multiple)
        assert sorted(i for b in batches for i in b) == list(range(len(rows)))
        for batch in batches:
            assert len(batch) * max(len(rows[i].tokens) for i in batch) <= TREE_BATCH_TOKENS
        assert all(len(b) % multiple == 0 or len(b) < multiple for b in batches[:-1])
    # One worker: batched as before, by tokens alone.
    assert tree_batches(rows) == tree_batches(rows, 1)


def test_rows_are_sized_by_the_paths_their_members_feed():
    import random

    from audit.models.torch_lm import _tree_paths

    rng = random.Random(0)
    for _ in range(200):
        requests = [
            ScoreRequest(tuple(rng.choice((0, 1)) for _ in range(rng.randint(1, 3))),
                         tuple(tuple(rng.randint(2, 5) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 3))))
            for _ in range(rng.randint(1, 6))
        ]
        members = list(range(len(requests)))
        paths = frozenset().union(*(_tree_paths(r) for r in requests))
        assert len(paths) == len(tree_row(requests, members).tokens)
        # Each request in one row, every row within the width but a request too large alone.
        width = rng.randint(4, 20)
        rows = [sorted({s[0] for s in row.scored}) for row in tree_rows(requests, members, max_tokens=width)]
        assert sorted(i for row in rows for i in row) == members
        for row in rows:
            assert len(tree_row(requests, row).tokens) <= width or len(row) == 1


def plain_sentence_logprob(model, ids):
    """Log-probability of ids[1:] after ids[0], by one ordinary forward of the whole sequence."""
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = logits.log_softmax(-1)
    return float(sum(logprobs[j, ids[j + 1]] for j in range(len(ids) - 1)))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_crows_pairs_as_trees_equal_plain_forwards(tiny_model_factory, arch):
    model = drive(load_model(str(tiny_model_factory(arch))))
    items, _ = load_crows(CROWS)
    items = items[:24]
    requests = [sentence_request(model, item.options) for item in items]
    assert all(len(r.context) < MIN_SHARED_TOKENS for r in requests)
    scores = model.score(requests)
    assert model._packing, f"{arch}: token trees fell back to plain rows"
    choices, plain_choices = [], []
    for req, got in zip(requests, scores):
        plain = [plain_sentence_logprob(model, list(req.context + cont)) for cont in req.continuations]
        assert [s.n_tokens for s in got] == [len(c) for c in req.continuations]
        for a, b in zip(got, plain):
            assert a.logprob == pytest.approx(b, abs=1e-4)
        choices.append(argmax([s.logprob for s in got]))
        plain_choices.append(argmax(plain))
    assert choices == plain_choices


def test_crows_pairs_on_two_scoring_workers_equal_plain_forwards(tiny_llama):
    """Rows shaped and batched for two workers score what one forward of each sentence does."""
    import os

    from audit.models.loader import LoadOptions

    try:
        model = drive(load_model(str(tiny_llama), LoadOptions(threads=2)))
        assert model.threads.workers == 2
        items, _ = load_crows(CROWS)
        requests = [sentence_request(model, item.options) for item in items[:40]]
        got = model.score(requests)
        want = model.score(requests, strategy="naive")
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    for g, w in zip(got, want):
        assert [s.n_tokens for s in g] == [s.n_tokens for s in w]
        assert [s.logprob for s in g] == pytest.approx([s.logprob for s in w], abs=1e-4)


def test_the_head_runs_on_a_few_rows_at_a_time_each_read_at_once():
    head = torch.nn.Linear(4, 6)
    sizes: list[int] = []
    head.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    rows = [torch.randn(n, 4) for n in (3, 2, 4, 1, 7, 2)]
    reads: list[tuple[int, list[int]]] = []

    def read(r, logits):
        reads.append((r, len(sizes)))  # which row, after how many head calls
        return logits

    got = head_in_pieces(head, rows, read, positions=5)
    # Rows 0-1 (5 positions), 2-3 (5), then 7 alone (larger than a piece), then 2.
    assert sizes == [5, 5, 7, 2]
    assert reads == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 4)]
    with torch.no_grad():
        for row, logits in zip(rows, got):
            assert torch.allclose(logits, head(row), atol=1e-6)


def test_the_head_runs_apart_only_where_the_logits_are_its_output(tiny_model_factory):
    items, _ = load_crows(CROWS)
    for arch, apart in (("llama", True), ("gemma2", False)):
        model = drive(load_model(str(tiny_model_factory(arch))))
        requests = [sentence_request(model, item.options) for item in items[:12]]
        got = model.score(requests)
        # Decided as scoring decides it: the capped model keeps its head inside its forward.
        assert model._packing and model._apart is apart, arch
        for g, w in zip(got, model.score(requests, strategy="naive")):
            assert [s.logprob for s in g] == pytest.approx([s.logprob for s in w], abs=1e-5)


def test_trees_and_shared_contexts_in_one_call(tiny_llama):
    """Short and long contexts mixed in one call come back in request order."""
    model = drive(load_model(str(tiny_llama)))
    start = tuple(model.text_prefix_ids) or (1,)
    long_context = start + tuple(range(3, 3 + MIN_SHARED_TOKENS))
    requests = [
        ScoreRequest(long_context, ((20, 21), (22,))),
        ScoreRequest(start, ((30, 31, 32), (30, 33))),
        ScoreRequest(long_context + (9,), ((23,),)),
        ScoreRequest(start, ((40,), (40, 41))),
    ]
    got = model.score(requests)
    want = model.score(requests, strategy="naive")
    for g, w in zip(got, want):
        assert [s.n_tokens for s in g] == [s.n_tokens for s in w]
        assert [s.logprob for s in g] == pytest.approx([s.logprob for s in w], abs=1e-4)


def test_the_throughput_benchmark_counts_the_tokens_each_path_feeds():
    script = benchmark_script("probe_throughput")
    requests = [ScoreRequest((0,), ((5, 6, 7), (5, 8, 7))), ScoreRequest((0,), ((9, 10), (9, 11)))]
    # One engine call of both pairs: one tree 0 5 6 8 9 (the last tokens are not fed). lm-eval
    # feeds each sentence but its last token (3, 3, 2, 2) in one batch padded to 3: 12.
    assert script.tokens_fed(requests, [[0, 1]]) == {"engine": 5, "engine_unpadded": 5, "engine_head": 5, "lm_eval": 12}
    # An engine call per pair: trees of 4 and 2 tokens. lm-eval batches all requests as one
    # call does, whatever the engine's calls: still one batch padded to 3.
    assert script.tokens_fed(requests, [[0], [1]]) == {"engine": 6, "engine_unpadded": 6, "engine_head": 6, "lm_eval": 12}
    # Nine sentences of 2 to 10 tokens after the start, each the start of the next: lm-eval's
    # first batch holds the eight longest padded to 10 tokens fed, the ninth (2 fed) a batch of
    # its own: 80 + 2. The engine feeds their shared tokens once: the longest's 10.
    long = [ScoreRequest((0,), (tuple(range(20, 20 + n)),)) for n in range(2, 11)]
    assert script.tokens_fed(long, [list(range(9))]) == {"engine": 10, "engine_unpadded": 10, "engine_head": 10, "lm_eval": 82}
    # A sentence feeding 121 tokens and one feeding 60, sharing only the start: a row each, in
    # one batch padded to 121. The head runs at the positions each row scores: 121 + 60.
    mixed = [ScoreRequest((0,), (tuple(range(1000, 1121)),)), ScoreRequest((0,), (tuple(range(9000, 9060)),))]
    assert script.tokens_fed(mixed, [[0, 1]]) == {"engine": 242, "engine_unpadded": 181, "engine_head": 181, "lm_eval": 242}


def test_lm_eval_batches_are_dealt_to_the_turns_in_rotation():
    script = benchmark_script("probe_throughput")
    # Five batches (as one lm-eval call makes them) over two turns: batches 0, 2, 4 and 1, 3,
    # each turn's requests in their first order, so lm-eval sorts them into the same batches.
    batches = [[4, 0], [7, 1], [2, 9], [3, 8], [5, 6]]
    assert script.deal(batches, 2) == [[0, 2, 4, 5, 6, 9], [1, 3, 7, 8]]
    assert script.deal(batches, 1) == [list(range(10))]
    assert script.deal(batches[:1], 3) == [[0, 4], [], []]


@pytest.mark.parametrize("threads", [1, 2])
def test_the_matmul_floor_prices_the_tokens_each_path_feeds(tiny_llama, threads):
    script = benchmark_script("probe_throughput")
    model = drive(load_model(str(tiny_llama)))
    fed = {"engine": 30, "engine_head": 20, "lm_eval": 50}
    floor = script.matmul_floor(model, fed, threads, rows=16, repeats=2)
    body, head = floor["body_ms_per_token"] / 1000, floor["head_ms_per_token"] / 1000
    assert body > 0 and head > 0
    assert floor["engine"] == pytest.approx(30 * body + 20 * head)
    assert floor["lm_eval"] == pytest.approx(50 * (body + head))
    assert torch.get_num_threads() == model.threads.threads  # the caller's threads are put back
