"""Perplexity against a hand computation, its chunking, and the command."""

import json
import math

import pytest
import torch

from audit.compress.calibration import read_text_file
from audit.errors import UserError
from audit.models import load_model
from audit.paths import data_dir
from audit.perplexity import HELDOUT_FILE, chunk_requests, heldout_text, perplexity
from audit.progress import drive
from tui.cli import main

TEXT = "Water boils at one hundred degrees Celsius at sea level. The quick brown fox jumps over the lazy dog. " * 3


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return drive(load_model(str(tiny_llama)))


def test_perplexity_equals_a_hand_computation(llama):
    """exp of the mean negative log-probability of every token, each chunk read after <|endoftext|>."""
    tokens = llama.encode(TEXT)
    chunk = 16
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens), chunk):
            piece = tokens[start : start + chunk]
            ids = torch.tensor([[0] + piece])
            logprobs = torch.log_softmax(llama.model(ids).logits[0].double(), dim=-1)
            for position, token in enumerate(piece):
                total -= float(logprobs[position, token])
                count += 1
    result = drive(perplexity(llama, TEXT, chunk_tokens=chunk))
    assert len(tokens) % chunk != 0  # a shorter last chunk is part of the check
    assert result.n_tokens == count == len(tokens)
    assert result.n_chunks == math.ceil(len(tokens) / chunk)
    assert result.nll_sum == pytest.approx(total, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result.seconds > 0


def test_chunks_cover_every_token_once(llama):
    tokens = llama.encode(TEXT)
    requests = chunk_requests(llama, TEXT, 10)
    assert [t for r in requests for t in r.continuations[0]] == tokens
    assert all(r.context == (0,) for r in requests)


def test_without_a_document_start_the_first_token_is_context(llama):
    class NoPrefix:
        text_prefix_ids = ()

        def encode(self, text):
            return llama.encode(text)

    tokens = llama.encode(TEXT)
    requests = chunk_requests(NoPrefix(), TEXT, 10)
    assert [r.context for r in requests] == [tuple(tokens[i : i + 1]) for i in range(0, len(tokens), 10)]
    assert sum(len(r.continuations[0]) for r in requests) == len(tokens) - len(requests)


def test_chunks_are_clamped_to_the_context_length(llama):
    result = drive(perplexity(llama, TEXT * 10, chunk_tokens=4096))
    assert result.chunk_tokens == 255  # 256 positions, one taken by <|endoftext|>


def test_heldout_text_is_shipped_and_long_enough():
    text = heldout_text()
    assert (data_dir() / HELDOUT_FILE).is_file() and len(text.split()) > 4000
    calibration = (data_dir() / "calibration_en.txt").read_text(encoding="utf-8")
    # Held-out means held out: no paragraph of it appears in the calibration text.
    paragraphs = [p for p in text.split("\n\n") if len(p) > 80]
    assert paragraphs and not any(p in calibration for p in paragraphs)


def test_text_files(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("hello world")
    assert read_text_file(plain) == "hello world"
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "one"}\n\n"two"\n')
    assert read_text_file(jsonl) == "one\n\ntwo"
    (tmp_path / "bad.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(UserError, match="line 1"):
        read_text_file(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="is empty"):
        read_text_file(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="does not exist"):
        read_text_file(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_text_file(tmp_path / "latin1.txt")


def test_cli_perplexity(tiny_llama, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    assert main(["perplexity", "--model", str(tiny_llama), "--text", str(text), "--chunk", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    want = drive(perplexity(drive(load_model(str(tiny_llama))), TEXT, chunk_tokens=16))
    assert data["perplexity"] == pytest.approx(want.perplexity, rel=1e-4)
    assert data["n_tokens"] == want.n_tokens and data["seconds"] >= 0 and data["backend"] == "pytorch"
    assert main(["perplexity", "--model", str(tiny_llama), "--text", str(tmp_path / "none.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_perplexity_too_large_for_a_float_is_infinite(llama, monkeypatch):
    """A model giving every token a log-probability of -1000 has perplexity e^1000: past a float,
    so infinite, not an OverflowError."""
    from audit.models.interface import ContinuationScore

    def score(requests, strategy="packed"):
        return [[ContinuationScore(-1000.0 * len(c), len(c)) for c in r.continuations] for r in requests]

    monkeypatch.setattr(llama, "score", score)
    result = drive(perplexity(llama, TEXT, chunk_tokens=16))
    assert result.perplexity == math.inf and result.nll_sum == 1000.0 * result.n_tokens
