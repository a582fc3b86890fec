"""The scoring engine's shared-prefix rows give what one forward per option gives, on every tiny architecture."""

import pytest

from audit.models import load_model
from audit.models.interface import ScoreRequest
from audit.models.torch_lm import MIN_SHARED_TOKENS, pack_rows, share_prefixes
from audit.probes.builtin import builtin_items
from audit.probes.scoring import score_request
from audit.progress import drive
from tests.tiny import ARCHITECTURES


def test_share_prefixes_groups_by_common_context():
    shared = tuple(range(100, 100 + MIN_SHARED_TOKENS))
    requests = [
        ScoreRequest(shared + (1, 2), ((5,), (6, 7))),
        ScoreRequest((0, 1, 2), ((3,),)),
        ScoreRequest(shared + (1, 3), ((5,),)),
        ScoreRequest(shared, ((9,),)),
        ScoreRequest(shared[:-1] + (0,), ((9,),)),  # shares one token too few
    ]
    rows = share_prefixes(requests)
    assert sorted(i for row in rows for i in row.members) == [0, 1, 2, 3, 4]
    grouped = [row for row in rows if len(row.members) > 1]
    assert len(grouped) == 1 and set(grouped[0].members) == {0, 2, 3}
    assert grouped[0].prefix == shared
    # Shared prefix once, then each member's own context rest and continuations.
    assert grouped[0].length == len(shared) + (2 + 3) + (2 + 1) + (0 + 1)


def test_pack_rows_first_fit_from_the_longest():
    # Longest first: 500 is over the limit, alone; 300 opens a lane (84 left), 200 another (184
    # left); 100 fits beside 200 (84 left), 80 beside 300 (4 left), 50 beside 200 and 100.
    assert pack_rows([100, 300, 80, 200, 500, 50], 384) == [[4], [1, 2], [3, 0, 5]]
    assert pack_rows([], 384) == []
    lengths = [17, 5, 90, 33, 33, 120, 64, 8]
    lanes = pack_rows(lengths, 128)
    assert sorted(i for lane in lanes for i in lane) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in lane) <= 128 for lane in lanes)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_prefix_rows_equal_one_forward_per_option(tiny_model_factory, arch):
    model = drive(load_model(str(tiny_model_factory(arch))))
    # One context's questions and its disambiguated version share long prefixes.
    items = builtin_items(["religion"])[:4] + builtin_items(["age"])[:1] + builtin_items(["ses"])[:1]
    requests = [score_request(model, item) for item in items]
    requests.append(requests[0])  # an identical context: its whole context is shared
    rows = share_prefixes(requests)
    assert any(len(row.members) > 1 for row in rows)
    assert len(pack_rows([row.length for row in rows])) < len(rows)  # rows side by side in a lane
    packed = model.score(requests)
    assert model._packing, f"{arch}: packed scoring fell back to plain rows"
    naive = model.score(requests, strategy="naive")
    for got, want in zip(packed, naive):
        assert [s.n_tokens for s in got] == [s.n_tokens for s in want]
        for a, b in zip(got, want):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_int8_activations_keep_packed_scoring(tiny_model_factory):
    """Rounding activations to int8 levels turns float-rounding differences between packed and
    plain rows into level changes (tenths of a nat on the default model); the packing check
    asks about the architecture, so it runs with the int8 layers in float; scoring does not."""
    import torch

    from audit.compress.quantize import quantize_int8_dynamic
    from audit.models.torch_lm import float_products

    model = drive(load_model(str(tiny_model_factory("llama"))))
    names, _ = quantize_int8_dynamic(model.model)
    layer = model.model.get_submodule(names[0])
    x = torch.randn(3, layer.in_features) * 4.0
    before = layer(x).detach()
    expected = (x @ layer.weight().dequantize().t()).detach()
    with float_products(model.model):
        assert torch.allclose(layer(x), expected, atol=1e-5)
        assert not torch.allclose(layer(x), before, atol=1e-5)  # no int8 levels for the input
    assert torch.equal(layer(x), before)  # per-token int8 again

    in_float = []
    packed = model._score_packed

    def spy(requests):
        in_float.append(torch.allclose(layer(x), expected, atol=1e-5))
        return packed(requests)

    model._score_packed = spy
    items = builtin_items(["religion"])[:4]
    model.score([score_request(model, item) for item in items])
    assert model._packing, "int8 layers made packed scoring fall back to plain rows"
    assert in_float == [True, False]  # the check in float, the scores in int8


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_scoring_workers_give_the_scores_of_one_forward_bit_for_bit(tiny_model_factory, arch):
    """Rows shared between workers of one thread each: packed rows, token trees and plain rows
    give exactly what one forward on the model's own threads gives."""
    from dataclasses import replace

    from audit.probes.scoring import sentence_request

    model = drive(load_model(str(tiny_model_factory(arch))))
    items = builtin_items(["religion"])[:6] + builtin_items(["age"])[:6]
    requests = [score_request(model, item) for item in items]
    requests += [sentence_request(model, [f"The {w} man went home.", f"The {w} woman went home."]) for w in ("old", "young", "poor", "rich")]
    try:
        model.threads = replace(model.threads, workers=1)
        alone = model.score(requests)
        alone_rows = model._score_rows(requests)
        model.threads = replace(model.threads, workers=3)
        shared = model.score(requests)
        shared_rows = model._score_rows(requests)
        assert model._workers is not None and model._workers.count == 3
    finally:
        model.close()
    assert shared == alone and shared_rows == alone_rows


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_batches_computing_ahead_give_the_scores_of_one_forward_bit_for_bit(tiny_model_factory, monkeypatch, workers):
    """Many small batches in each call, so that workers done with a batch's rows take the next
    batch's while others finish: the scores are exactly those of one forward per batch."""
    from dataclasses import replace

    import audit.models.torch_lm as torch_lm
    from audit.probes.scoring import sentence_request

    monkeypatch.setattr(torch_lm, "TREE_BATCH_TOKENS", 250)
    monkeypatch.setattr(torch_lm, "PACKED_BATCH_TOKENS", 700)
    model = drive(load_model(str(tiny_model_factory("llama"))))
    items = builtin_items(["religion"])[:8] + builtin_items(["age"])[:8]
    requests = [score_request(model, item) for item in items]
    words = ("old", "young", "poor", "rich", "tall", "short", "kind", "loud", "quiet", "strong", "weak", "rude")
    requests += [sentence_request(model, [f"The {w} {who} went {where}.", f"The {w} {who.replace('man', 'woman')} went {where}."])
                 for w in words for who, where in (("man", "home"), ("young man", "to work"))]
    started = []
    start_rows = model._start_rows
    model._start_rows = lambda *args: started.append(tuple(args[1].shape)) or start_rows(*args)
    try:
        model.threads = replace(model.threads, workers=1)
        model.score(requests[:1])  # the packing check, once
        started.clear()
        alone = model.score(requests)
        batches = len(started)
        model.threads = replace(model.threads, workers=workers)
        shared = model.score(requests)
        assert model._workers is not None and model._workers.count == workers
    finally:
        model.close()
    # Both calls went batch by batch, as the layout says, batches of one row and of two.
    assert started == 2 * torch_lm.packed_batch_shapes(requests)
    assert batches >= 8 and {rows for rows, _ in started} == {1, 2}
    assert shared == alone


def _batches_started(events, count, parts=None):
    """`count` started batches that log when they are made and finished, their parts done
    unless given."""
    from audit.models.torch_lm import _StartedBatch
    from audit.models.workers import done_future

    for b in range(count):
        events.append(f"start {b}")
        yield _StartedBatch(parts[b] if parts else [done_future([b])], lambda entries, b=b: events.append(f"finish {b} {entries}"))


def test_batches_are_finished_in_order_with_as_many_ahead_as_there_are_workers():
    from types import SimpleNamespace

    from audit.models.torch_lm import TorchLanguageModel

    events: list[str] = []
    TorchLanguageModel._finish_in_order(SimpleNamespace(threads=SimpleNamespace(workers=3)), _batches_started(events, 6))
    assert events == ["start 0", "start 1", "start 2", "start 3", "finish 0 [0]", "start 4", "finish 1 [1]", "start 5",
                      "finish 2 [2]", "finish 3 [3]", "finish 4 [4]", "finish 5 [5]"]
    for workers in (None, 1, 2):  # batches made for 2 workers share out evenly: one at a time
        events.clear()
        TorchLanguageModel._finish_in_order(SimpleNamespace(threads=SimpleNamespace(workers=workers)), _batches_started(events, 3))
        assert events == ["start 0", "finish 0 [0]", "start 1", "finish 1 [1]", "start 2", "finish 2 [2]"]


def test_a_failing_batch_is_raised_after_every_batch_started_has_finished_computing():
    import threading
    import time
    from concurrent.futures import Future
    from types import SimpleNamespace

    from audit.models.torch_lm import TorchLanguageModel

    failed: Future = Future()
    failed.set_exception(RuntimeError("a row failed"))
    slow: Future = Future()
    threading.Thread(target=lambda: (time.sleep(0.2), slow.set_result([1]))).start()
    events: list[str] = []
    model = SimpleNamespace(threads=SimpleNamespace(workers=3))
    with pytest.raises(RuntimeError, match="a row failed"):
        TorchLanguageModel._finish_in_order(model, _batches_started(events, 3, [[failed], [slow], [slow]]))
    assert slow.done() and events == ["start 0", "start 1", "start 2"]  # nothing handed over

    def breaking():
        yield from _batches_started(events, 1, [[later]])
        raise ValueError("a batch could not be made")

    later: Future = Future()
    threading.Thread(target=lambda: (time.sleep(0.2), later.set_result([2]))).start()
    with pytest.raises(ValueError, match="could not be made"):
        TorchLanguageModel._finish_in_order(model, breaking())
    assert later.done()


def test_the_output_head_runs_only_at_the_positions_each_row_reads(tiny_model_factory):
    """Two contexts in rows of their own, in one batch: the head multiplies each row's own
    positions, 5 in all, not the union of both rows' (5) in each of the 2 rows; on two workers,
    each worker its own row's."""
    from dataclasses import replace

    from audit.models.torch_lm import output_head

    model = drive(load_model(str(tiny_model_factory("llama"))))
    # a: its last context token predicts both continuations' first tokens, then 5 and 6 predict
    # 6 and 7 (3 positions); b: its last context token and 9 (2). Lengths 24 and 14: too long to
    # share a lane of 24, so two rows.
    a = ScoreRequest(tuple(range(10, 30)), ((5, 6, 7), (8,)))
    b = ScoreRequest(tuple(range(40, 52)), ((9, 4),))
    seen: dict[int, list[tuple[int, ...]]] = {}
    scores = {}
    try:
        model.score([a])  # the first call checks the packing and the products against the model's own
        for workers in (1, 2):
            model.threads = replace(model.threads, workers=workers)
            calls = seen[workers] = []
            # Positions per call of the head (its output's all but last dimension; the model's
            # own call is given none where the head runs after it, `_head_apart`).
            handle = output_head(model.model).register_forward_hook(lambda module, args, out, calls=calls: calls.append(out.shape[:-1].numel()))
            try:
                scores[workers] = model.score([a, b])
            finally:
                handle.remove()
        naive = model.score([a, b], strategy="naive")
    finally:
        model.close()
    assert [n for n in seen[1] if n] == [5] and sorted(n for n in seen[2] if n) == [2, 3]
    assert scores[2] == scores[1]
    for got, want in zip(scores[1], naive):
        for x, y in zip(got, want):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
