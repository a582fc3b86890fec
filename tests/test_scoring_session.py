"""A scoring session lays the linear layers out for oneDNN once, and scores what plain calls score."""

import pytest
import torch
from torch import nn

from audit.models import load_model
from audit.models.torch_lm import LAYOUT_MEMORY_SHARE, lay_out_weights, onednn_linear_available, onednn_products, output_head
from audit.probes.crows import load_crows
from audit.probes.scoring import sentence_request
from audit.progress import drive
from tests.conftest import SHARED_DATA

CROWS = SHARED_DATA / "crows_pairs" / "crows_pairs_anonymized.csv"
needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="scoring multiplies through oneDNN on x86 only")


def logprobs(scores):
    return [[s.logprob for s in row] for row in scores]


@pytest.fixture
def crows_model(tiny_llama):
    model = drive(load_model(str(tiny_llama)))
    items, _ = load_crows(CROWS)
    yield model, [sentence_request(model, item.options) for item in items[:24]]
    model.close()


@needs_onednn
def test_scores_in_a_session_are_those_of_plain_calls_bit_for_bit(crows_model):
    model, requests = crows_model
    plain = logprobs(model.score(requests))
    single = logprobs(model.score(requests[:1]))
    with model.scoring():
        assert len(model._laid_out) == sum(type(m) is nn.Linear for m in model.model.modules())
        assert logprobs(model.score(requests)) == plain
        assert logprobs(model.score(requests[:1])) == single
    assert not model._laid_out


@needs_onednn
def test_the_head_is_let_go_of_when_the_last_session_ends(crows_model):
    model, _ = crows_model
    with model.scoring():
        held = dict(model._laid_out)
        with model.scoring():
            assert model._laid_out == held
        assert model._laid_out == held
    assert model._laid_out == {}


@needs_onednn
def test_the_copies_are_handed_back_to_the_system_when_the_last_session_ends(crows_model, monkeypatch):
    """Freed, glibc would keep them: the process's RSS would stay the height of the probe's."""
    import audit.models.torch_lm as torch_lm

    model, _ = crows_model
    trims = []
    monkeypatch.setattr(torch_lm, "release_free_heap", lambda: trims.append(dict(model._laid_out)))
    with model.scoring():
        with model.scoring():
            pass
        assert trims == []
    assert trims == [{}]


@needs_onednn
def test_a_head_changed_in_place_in_a_session_multiplies_by_its_new_weight(crows_model):
    model, requests = crows_model
    head = output_head(model.model)
    with model.scoring():
        assert head in model._laid_out
        before = logprobs(model.score(requests))
        with torch.no_grad():
            head.weight.mul_(0.5)
        inside = logprobs(model.score(requests))
    assert inside != before
    assert inside == logprobs(model.score(requests))


def head_model(hidden=64, vocab=100, body=()):
    """A module whose output head is a vocab x hidden linear layer, with body layers of the given widths."""
    model = nn.Module()
    model.body = nn.ModuleList(nn.Linear(hidden, width, bias=False) for width in body)
    model.lm_head = nn.Linear(hidden, vocab, bias=False)
    model.get_output_embeddings = lambda: model.lm_head
    return model


@needs_onednn
def test_every_layer_is_laid_out_where_memory_allows_else_the_head_alone_else_none():
    model = head_model(64, 100, body=(64, 32))
    head = 64 * 100 * 4
    every = head + (64 * 64 + 32 * 64) * 4
    room = lambda size: int(size / LAYOUT_MEMORY_SHARE)  # noqa: E731
    assert set(lay_out_weights(model, room(every), 16)) == {model.lm_head, *model.body}
    assert list(lay_out_weights(model, room(every) - 1, 16)) == [model.lm_head]
    assert list(lay_out_weights(model, room(head), 16)) == [model.lm_head]
    assert lay_out_weights(model, room(head) - 1, 16) == {}


@needs_onednn
def test_one_row_keeps_the_stored_weight():
    """oneDNN multiplies a single row by another kernel, whose sums differ from the blocked one's."""
    torch.manual_seed(0)
    model = head_model(576, 2048)
    laid_out = lay_out_weights(model, 1 << 40, 256)
    for rows in (1, 3, 40):
        x = torch.randn(rows, 576)
        with torch.inference_mode(), onednn_products(model):
            plain = model.lm_head(x)
        with torch.inference_mode(), onednn_products(model, laid_out):
            assert torch.equal(model.lm_head(x), plain)


def test_a_probe_scores_in_one_session(tiny_llama):
    from audit.probes import load_suite
    from audit.probes.job import ProbeSettings, run_probe

    model = drive(load_model(str(tiny_llama)))
    real = model.score
    open_at_call = []

    def score(requests, *args, **kwargs):
        open_at_call.append(model._sessions)
        return real(requests, *args, **kwargs)

    model.score = score
    try:
        drive(run_probe(model, load_suite("builtin"), ProbeSettings(batch_items=16)))
        assert len(open_at_call) > 2 and set(open_at_call) == {1} and model._sessions == 0
    finally:
        model.close()
