"""Perplexity on a stand-in model whose every token's log-probability is known, worked out by hand."""

import math
from types import SimpleNamespace

import pytest

from audit.models.interface import ContinuationScore
from audit.perplexity import perplexity
from audit.progress import drive


class KnownModel:
    """Token i of the text is id i + 1 and has log-probability -id / 10, whatever its context;
    `nan_on` makes the chunk holding that token id score NaN (a model whose logits overflowed)."""

    def __init__(self, n_tokens, prefix=(0,), context_length=None, nan_on=None):
        self.n_tokens = n_tokens
        self.text_prefix_ids = prefix
        self.context_length = context_length
        self.nan_on = nan_on
        self.requests = []

    def facts(self):
        return SimpleNamespace(context_length=self.context_length)

    def encode(self, text):
        return list(range(1, self.n_tokens + 1))

    def score(self, requests, strategy="packed"):
        self.requests.extend(requests)
        out = []
        for r in requests:
            row = []
            for c in r.continuations:
                lp = math.nan if self.nan_on in c else -sum(c) / 10
                row.append(ContinuationScore(lp, len(c)))
            out.append(row)
        return out


def test_token_weighted_over_chunks_of_unequal_length():
    # Tokens 1..5 in chunks of 2 after the document start: [1, 2], [3, 4], [5].
    # NLL per chunk: 0.3, 0.7, 0.5; sum 1.5 over 5 tokens; perplexity exp(0.3).
    # (The mean of the chunks' own means, (0.15 + 0.35 + 0.5) / 3 = 1/3, would be wrong.)
    model = KnownModel(5)
    result = drive(perplexity(model, "text", chunk_tokens=2))
    assert [r.context for r in model.requests] == [(0,)] * 3
    assert result.chunk_nll == pytest.approx((0.3, 0.7, 0.5))
    assert result.chunk_token_counts == (2, 2, 1)
    assert result.n_tokens == 5 and result.nll_sum == pytest.approx(1.5)
    assert result.perplexity == pytest.approx(math.exp(0.3))


def test_without_a_document_start_each_chunk_s_first_token_is_its_context():
    # Chunks [1, 2], [3, 4], [5]: 1 and 3 are context, 5 alone has none and is not scored.
    # Scored: 2 and 4, NLL 0.2 + 0.4 = 0.6 over 2 tokens: perplexity exp(0.3).
    model = KnownModel(5, prefix=())
    result = drive(perplexity(model, "text", chunk_tokens=2))
    assert [(r.context, r.continuations) for r in model.requests] == [((1,), ((2,),)), ((3,), ((4,),))]
    assert result.n_tokens == 2 and result.perplexity == pytest.approx(math.exp(0.3))


def test_chunk_and_document_start_fit_the_context():
    # 4 positions, one for the document start: chunks of 3, [1, 2, 3], [4, 5]; NLL 0.6 + 0.9.
    model = KnownModel(5, context_length=4)
    result = drive(perplexity(model, "text", chunk_tokens=512))
    assert result.chunk_tokens == 3 and result.chunk_token_counts == (3, 2)
    assert max(len(r.context) + len(r.continuations[0]) for r in model.requests) == 4
    assert result.perplexity == pytest.approx(math.exp(1.5 / 5))


def test_a_log_likelihood_that_is_not_a_number_is_no_perplexity():
    """A chunk scored NaN (logits that overflowed) leaves the perplexity NaN, not infinite: an
    infinite perplexity says a token had probability 0, which nothing showed."""
    model = KnownModel(5, nan_on=3)
    result = drive(perplexity(model, "text", chunk_tokens=2))
    assert math.isnan(result.chunk_nll[1])
    assert math.isnan(result.perplexity)


def test_a_token_of_probability_zero_is_an_infinite_perplexity():
    class ZeroProbability(KnownModel):
        def score(self, requests, strategy="packed"):
            return [[ContinuationScore(-math.inf, len(c)) for c in r.continuations] for r in requests]

    result = drive(perplexity(ZeroProbability(5), "text", chunk_tokens=2))
    assert result.perplexity == math.inf


def stored(nll, tokens):
    return {"source": "text", "chunk_nll": list(nll), "chunk_token_counts": list(tokens), "text_sha256": "x",
            "perplexity": math.exp(sum(nll) / sum(tokens))}


def test_the_relative_change_is_the_ratio_of_the_two_perplexities():
    from audit.perplexity import change_bounds

    # Baseline: NLL 2 over 2 tokens and 3 over 3, perplexity exp(5 / 5) = e.
    # Variant: 4 and 3, perplexity exp(7 / 5). Change: exp(2 / 5) - 1 = 49.18%.
    # Per chunk the per-token differences are 1 and 0; weighted by 2 and 3 tokens: 2 / 5.
    bounds, note = change_bounds(stored((2.0, 3.0), (2, 3)), stored((4.0, 3.0), (2, 3)), 0.975)
    assert note is None and bounds.n == 2
    assert bounds.value == pytest.approx(100 * math.expm1(0.4))
    assert bounds.lower < bounds.value < bounds.upper
    # The same per-token difference on every chunk has no spread: exact bounds.
    same, _ = change_bounds(stored((2.0, 3.0), (2, 3)), stored((3.0, 4.5), (2, 3)), 0.975)
    assert same.value == same.lower == same.upper == pytest.approx(100 * math.expm1(0.5))


def test_no_relative_change_from_chunks_that_are_not_numbers():
    from audit.perplexity import change_bounds

    bounds, note = change_bounds(stored((2.0, 3.0), (2, 3)), stored((math.nan, 3.0), (2, 3)), 0.975)
    assert bounds is None and "not a number on 1 of 2 chunks" in note
    bounds, note = change_bounds(stored((math.inf, 3.0), (2, 3)), stored((2.0, 3.0), (2, 3)), 0.975)
    assert bounds is None and "infinite" in note
    bounds, note = change_bounds(stored((2.0, 3.0), (2, 3)), stored((math.inf, 3.0), (2, 3)), 0.975)
    assert note is None and bounds.value == math.inf
    bounds, note = change_bounds(stored((2.0, 3.0), (2, 3)), stored((2.0, 3.0), (3, 2)), 0.975)
    assert bounds is None and note.startswith("not comparable")
