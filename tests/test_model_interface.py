"""The common model interface on tiny models of every supported architecture and on ONNX Runtime."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.models import LanguageModel, ScoreRequest, load_model
from audit.models.interface import batches_by_tokens
from audit.progress import drive
from tests.conftest import run_cli
from tests.tiny import ARCHITECTURES

CONTEXT = "Context: a nurse and a doctor walked into the hospital. Question: who was the engineer? Answer:"
OPTIONS = [" the nurse", " the doctor", " cannot be determined"]


def load(path) -> LanguageModel:
    return drive(load_model(str(path)))


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return load(tiny_llama)


def test_encode_adds_no_special_tokens_and_prefix_is_document_start(llama):
    ids = llama.encode("The quick brown fox")
    assert ids and ids[0] not in {0, 1, 2}
    assert llama.text_prefix_ids == (0,)
    request = llama.text_request(CONTEXT, OPTIONS)
    assert request.context[0] == 0 and 1 not in request.context


def test_split_pair_moves_trailing_space_into_continuation(llama):
    context_ids, cont_ids = llama.split_pair("Answer: ", "the nurse")
    assert llama.decode(context_ids) == "Answer:"
    assert llama.decode(cont_ids) == " the nurse"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_scoring_equals_one_forward_per_option(tiny_model_factory, arch):
    model = load(tiny_model_factory(arch))
    requests = [
        model.text_request(CONTEXT, OPTIONS),
        model.text_request("Water boils at", [" one hundred degrees", " zero"]),
        model.text_request("Who", [" was"]),
    ]
    packed = model.score(requests)
    naive = model.score(requests, strategy="naive")
    assert model._packing, f"{arch}: packed scoring fell back to plain rows"
    for got, want in zip(packed, naive):
        assert [s.n_tokens for s in got] == [s.n_tokens for s in want]
        for a, b in zip(got, want):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_scores_are_log_probabilities_that_sum_over_the_vocabulary(llama):
    import torch

    context = llama.text_prefix_ids + tuple(llama.encode("The quick"))
    vocab = llama.model.config.vocab_size
    scores = llama.score([ScoreRequest(context, tuple((t,) for t in range(vocab)))])[0]
    total = sum(math.exp(s.logprob) for s in scores)
    assert total == pytest.approx(1.0, abs=1e-4)
    best = max(range(vocab), key=lambda t: scores[t].logprob)
    with torch.inference_mode():
        logits = llama.model(torch.tensor([context])).logits[0, -1]
    assert best == int(logits.argmax())


def test_batches_by_tokens_respects_budget():
    lengths = [5, 50, 10, 40, 3]
    groups = batches_by_tokens(lengths, max_tokens=100, max_rows=8)
    assert sorted(i for g in groups for i in g) == list(range(5))
    for group in groups:
        assert max(lengths[i] for i in group) * len(group) <= 100 or len(group) == 1


@given(
    lengths=st.lists(st.integers(1, 300), max_size=30),
    max_tokens=st.integers(1, 1200),
    max_rows=st.integers(1, 10),
    multiple=st.integers(2, 4),
    shuffle=st.none() | st.randoms(use_true_random=False),
)
def test_batches_for_workers_share_out_evenly_within_the_budget(lengths, max_tokens, max_rows, multiple, shuffle):
    order = None
    if shuffle is not None:
        order = list(range(len(lengths)))
        shuffle.shuffle(order)
    groups = batches_by_tokens(lengths, max_tokens, max_rows, order, multiple=multiple)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    if order is not None:
        assert [i for g in groups for i in g] == order
    for group in groups:
        assert len(group) == 1 or (max(lengths[i] for i in group) * len(group) <= max_tokens and len(group) <= max_rows)
    # Every batch but the last holds a multiple of the workers, unless fewer fit.
    assert all(len(g) % multiple == 0 or len(g) < multiple for g in groups[:-1])


def test_batches_for_workers_by_hand():
    # 512 tokens hold 5 rows of 100: on one worker 5 and 2; on two, 4 and 3 (the last batch
    # keeps its odd row: nothing follows it), so no batch but the last leaves a worker waiting.
    assert [len(g) for g in batches_by_tokens([100] * 7, 512, 32)] == [5, 2]
    assert [len(g) for g in batches_by_tokens([100] * 7, 512, 32, multiple=2)] == [4, 3]
    assert batches_by_tokens([100] * 7, 512, 32, multiple=3) == [[0, 1, 2], [3, 4, 5, 6]]
    assert batches_by_tokens([300, 200, 10], 512, 32, multiple=2) == [[0], [1, 2]]  # one row alone fits


def test_generation_is_deterministic(llama):
    greedy = [llama.generate_chat("Who was the engineer?", max_new_tokens=6) for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0].token_ids
    assert greedy[0].prompt_tokens == len(llama.chat_prompt_ids("Who was the engineer?"))
    sampled = [llama.generate_chat("Who?", max_new_tokens=6, temperature=1.0, seed=7) for _ in range(2)]
    assert sampled[0] == sampled[1]
    others = {llama.generate_chat("Who?", max_new_tokens=6, temperature=1.0, seed=s).token_ids for s in range(5)}
    assert len(others) > 1


def test_chat_prompt_uses_template_and_plain_text_does_not(llama):
    chat = llama.chat_prompt_ids("hello")
    assert chat[0] == 1  # <|im_start|>, the chat-turn marker
    assert llama.decode(chat).endswith("assistant\n")


def test_facts(llama, tiny_llama):
    facts = llama.facts()
    assert facts.backend == "pytorch"
    assert facts.architecture == "LlamaForCausalLM"
    assert facts.parameters == sum(p.numel() for p in llama.model.parameters())
    assert facts.size_on_disk_bytes >= (tiny_llama / "model.safetensors").stat().st_size
    assert 0.0 <= facts.weight_sparsity < 0.01
    assert facts.layers == 2 and facts.source_kind == "folder"


def test_weight_sparsity_counts_zeros_in_linear_layers(tiny_llama):
    import torch

    model = load(tiny_llama)
    with torch.no_grad():
        model.model.model.layers[0].mlp.down_proj.weight.zero_()
    zeroed = model.model.model.layers[0].mlp.down_proj.weight.numel()
    total = sum(m.weight.numel() for m in model.model.modules() if isinstance(m, torch.nn.Linear) and m is not model.model.lm_head)
    assert model.facts().weight_sparsity == pytest.approx(zeroed / total, abs=1e-3)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_llama, tmp_path_factory):
    from optimum.exporters.onnx import main_export

    out = tmp_path_factory.mktemp("onnx") / "llama-onnx"
    main_export(str(tiny_llama), output=str(out), task="text-generation-with-past", do_validation=False)
    return out


def test_onnx_backend_matches_pytorch(tiny_onnx, llama):
    onnx_model = load(tiny_onnx)
    assert onnx_model.backend == "onnxruntime"
    requests = [onnx_model.text_request(CONTEXT, OPTIONS)]
    for a, b in zip(onnx_model.score(requests)[0], llama.score(requests)[0]):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
    assert onnx_model.generate_chat("hello", max_new_tokens=5) == llama.generate_chat("hello", max_new_tokens=5)
    facts = onnx_model.facts()
    assert facts.backend == "onnxruntime" and facts.source_kind == "onnx"
    assert facts.parameters == pytest.approx(llama.facts().parameters, rel=0.01)
    assert facts.weight_sparsity == 0.0


def test_onnx_scores_each_context_once_from_the_cache(tiny_onnx, llama):
    """Contexts of several lengths in one batch (padding between a short context and its
    continuations), continuations of one and several tokens, contexts that share a prefix
    (computed once, each rest after it: rests of several lengths, and one empty): the same
    scores as padded rows and as the PyTorch model."""
    from audit.models.torch_lm import context_segments

    onnx_model = load(tiny_onnx)
    trip = "Two friends met at the station before the morning train"
    requests = [
        onnx_model.text_request(CONTEXT, OPTIONS),
        onnx_model.text_request("The bridge", [" held.", " fell", "."]),
        onnx_model.text_request(trip + " to the coast on a grey and windy day", [" left.", " was late again."]),
        onnx_model.text_request(trip, [" left.", " came"]),
        onnx_model.text_request(trip + " to the coast on a grey and windy day, and one of them", [" smiled.", " waved"]),
    ]
    segments, ends = context_segments([r.context for r in requests])
    # The three trips share their start; one ends there, the next after " to the coast...", the
    # last after that: three depths of segments, each fed after the one before.
    trips = [segments[ends[i]] for i in (3, 2, 4)]
    assert [s.depth for s in trips] == [0, 1, 2]
    assert trips[1].parent == ends[3] and trips[2].parent == ends[2]
    cached = onnx_model.score(requests)
    assert onnx_model._caching, "the tiny llama export should score from its cache"
    rows = onnx_model.score(requests, strategy="rows")
    reference = llama.score(requests)
    for got, want, torch_scores in zip(cached, rows, reference):
        assert [s.n_tokens for s in got] == [s.n_tokens for s in want]
        for a, b, c in zip(got, want, torch_scores):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert a.logprob == pytest.approx(c.logprob, abs=1e-3)



def test_onnx_cached_scoring_over_several_batches(tiny_onnx):
    """More requests than one batch holds: batched in token order, so contexts that share a
    start meet, and every score is what padded rows give."""
    from audit.models.torch_lm import MAX_BATCH_ROWS

    onnx_model = load(tiny_onnx)
    stems = ["The river rose after the storm, and the old stone bridge", "Two friends met at the station before the morning train"]
    requests = [onnx_model.text_request(stems[n % 2] + " and" * (n % 5), [" held.", " left", "."]) for n in range(MAX_BATCH_ROWS + 8)]
    cached = onnx_model.score(requests)
    assert onnx_model._caching
    rows = onnx_model.score(requests, strategy="rows")
    assert [[s.n_tokens for s in r] for r in cached] == [[s.n_tokens for s in r] for r in rows]
    assert [s.logprob for r in cached for s in r] == pytest.approx([s.logprob for r in rows for s in r], abs=1e-4)

def test_cli_models_info_json(tiny_llama, tmp_path):
    result = run_cli("models", "info", str(tiny_llama), "--json", env={"EDGE_AUDIT_CACHE": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"] == "pytorch" and data["parameters"] > 0
    assert data["size_on_disk_mb"] > 0 and data["load_seconds"] > 0


def test_cli_models_list_and_version(tmp_path):
    result = run_cli("models", "list", "--json", env={"EDGE_AUDIT_CACHE": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [a["alias"] for a in data["aliases"]] == ["smollm2-135m"]
    assert data["cached"] == []
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("edge-audit ")


def test_context_segments_by_hand():
    from audit.models.torch_lm import context_segments

    root = tuple(range(1, 11))
    long = root + tuple(range(20, 29))
    contexts = [root, root + (11, 12), long, long + (29, 30), (50, 51)]
    segments, ends = context_segments(contexts, min_shared=8)
    got = [(s.tokens, s.start, s.parent, s.depth) for s in segments]
    assert got == [
        (root, 0, -1, 0),                   # ten tokens four contexts share; the first ends there
        ((11, 12), 10, 0, 1),               # two tokens only one has: its own rest
        (tuple(range(20, 29)), 10, 0, 1),   # nine more that two share
        ((29, 30), 19, 2, 2),
        ((50, 51), 0, -1, 0),               # shares nothing
    ]
    assert ends == [0, 1, 2, 3, 4]
    # A shared start shorter than min_shared is not split off: each context keeps it.
    segments, ends = context_segments([(1, 2, 3), (1, 2, 4)], min_shared=3)
    assert [s.tokens for s in segments] == [(1, 2, 3), (1, 2, 4)] and ends == [0, 1]
    # Contexts that are the same end at one segment.
    segments, ends = context_segments([root, root], min_shared=8)
    assert len(segments) == 1 and ends == [0, 0]


def test_a_batch_splits_by_context_length_only_where_that_feeds_fewer_tokens():
    from audit.models.torch_lm import SPLIT_MIN_ROWS, segment_tokens, split_by_length

    root = tuple(range(1, 11))
    # Ten shared tokens once, then the two-token rest: 12 fed, nothing padded.
    assert segment_tokens([root, root + (11, 12)]) == 12
    # Four short and four long contexts that share nothing: one call pads all eight to 50 tokens
    # (400 fed); split by length, 4 x 2 + 4 x 50 = 208.
    short = [(100 + i, 200 + i) for i in range(4)]
    long = [tuple(range(1000 * (i + 1), 1000 * (i + 1) + 50)) for i in range(4)]
    contexts = [long[0], short[0], long[1], short[1], long[2], short[2], long[3], short[3]]
    assert SPLIT_MIN_ROWS == 4 and segment_tokens(contexts) == 400
    assert split_by_length(contexts, list("abcdefgh")) == [["b", "d", "f", "h"], ["a", "c", "e", "g"]]
    # Contexts of one length, or too few to split, stay whole.
    same = [tuple(range(100 * i, 100 * i + 10)) for i in range(1, 9)]
    assert split_by_length(same, list(range(8))) == [list(range(8))]
    assert split_by_length(contexts[:7], list(range(7))) == [list(range(7))]
