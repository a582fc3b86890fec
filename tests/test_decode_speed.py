"""Greedy decoding with a key/value cache: the same tokens as transformers' greedy `generate`, token
by token as they appear, with `generate` kept where a model's generation settings change greedy picks."""

import pytest
import torch

from audit.models import load_model
from audit.models.torch_lm import GREEDY_CHECK_TOKENS, greedy_decode, greedy_decode_fits, onednn_linear_available
from audit.profile import benchmark_prompt_ids, timed_generation
from audit.progress import drive
from hardware.memory import MB
from tests.tiny import ARCHITECTURES


def reference(model, prompt, new_tokens, eos=None):
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            min_new_tokens=None if eos else new_tokens, do_sample=False, temperature=None, top_k=None, top_p=None,
            eos_token_id=eos, pad_token_id=0,
        )
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_decode_gives_generates_tokens(tiny_model_factory, arch):
    lm = drive(load_model(str(tiny_model_factory(arch))))
    assert greedy_decode_fits(lm.model)
    prompt = benchmark_prompt_ids(lm, 40)
    want = reference(lm.model, prompt, 24)
    seen = []
    assert greedy_decode(lm.model, prompt, max_new_tokens=24, on_token=seen.append) == want
    assert seen == want
    # The public generate takes the same path and agrees with itself when forced past end tokens.
    assert list(lm.generate(prompt, max_new_tokens=24, stop_at_eos=False).token_ids) == want
    assert lm._greedy_decode_agrees is True


def test_greedy_decode_stops_after_a_stop_token_like_generate(tiny_llama):
    lm = drive(load_model(str(tiny_llama)))
    prompt = benchmark_prompt_ids(lm, 30)
    free = reference(lm.model, prompt, 12)
    stop = free[5]
    first = free.index(stop)  # the stop token may come earlier than position 5
    want = reference(lm.model, prompt, 12, eos=[stop])
    assert want == free[: first + 1]
    assert greedy_decode(lm.model, prompt, max_new_tokens=12, stop_token_ids=(stop,)) == want
    assert greedy_decode(lm.model, prompt, max_new_tokens=0) == []


def test_a_generation_setting_that_changes_greedy_picks_keeps_generate(tiny_llama):
    lm = drive(load_model(str(tiny_llama)))
    lm.model.generation_config.repetition_penalty = 3.0
    assert not greedy_decode_fits(lm.model)
    prompt = benchmark_prompt_ids(lm, 30)
    plain = greedy_decode(lm.model, prompt, max_new_tokens=16)
    penalised = lm.generate(prompt, max_new_tokens=16, stop_at_eos=False)
    assert lm._greedy_decode_agrees is False
    # The penalty bans repeats that plain greedy decoding makes, so the two differ here.
    assert len(set(plain)) < len(plain) and list(penalised.token_ids) != plain


def test_a_model_whose_decode_disagrees_with_generate_falls_back(tiny_llama, monkeypatch):
    import audit.models.torch_lm as torch_lm

    lm = drive(load_model(str(tiny_llama)))
    prompt = benchmark_prompt_ids(lm, 30)
    want = reference(lm.model, prompt, 8)
    real = torch_lm.greedy_decode
    monkeypatch.setattr(torch_lm, "greedy_decode", lambda *a, **k: [t + 1 for t in real(*a, **k)])
    assert list(lm.generate(prompt, max_new_tokens=8, stop_at_eos=False).token_ids) == want
    assert lm._greedy_decode_agrees is False and GREEDY_CHECK_TOKENS <= 8


def test_profile_timing_sees_every_token_of_the_greedy_decode(tiny_llama):
    lm = drive(load_model(str(tiny_llama)))
    prompt = benchmark_prompt_ids(lm, 30)
    timing = timed_generation(lm, prompt, 10)
    assert len(timing.token_times_s) == 10
    assert timing.started_s < timing.token_times_s[0] and list(timing.token_times_s) == sorted(timing.token_times_s)
    assert timing.token_times_s[-1] <= timing.finished_s


def test_weight_bytes_per_token_by_hand():
    from torch import nn

    from audit.profile import weight_bytes_per_token

    class Toy(nn.Module):
        def __init__(self, tied):
            super().__init__()
            self.embed = nn.Embedding(10, 4)  # 40 floats, one row of 4 read per token
            self.body = nn.Linear(4, 4)  # 16 + 4 bias
            self.head = nn.Linear(4, 10, bias=False)  # 40
            if tied:
                self.head.weight = self.embed.weight

        def get_output_embeddings(self):
            return self.head

    assert weight_bytes_per_token(Toy(tied=False)) == 4 * (4 + 16 + 4 + 40)
    assert weight_bytes_per_token(Toy(tied=True)) == 4 * (40 + 16 + 4)  # the table is the head, read whole
    assert weight_bytes_per_token(Toy(tied=False).half()) == 2 * (4 + 16 + 4 + 40)
    assert weight_bytes_per_token(object()) is None


def test_profile_records_the_weights_read_per_token(tiny_llama):
    from audit.profile import ProfileSettings, profile_loaded

    lm = drive(load_model(str(tiny_llama)))
    settings = ProfileSettings(prompt_tokens=16, new_tokens=4, runs=2, warmup_runs=1, probe_items=0, sampler_interval_s=0.05)
    data = drive(profile_loaded(lm, settings)).to_dict()
    # A tied llama reads every parameter once per token.
    want = sum(p.numel() * 4 for p in {id(p): p for p in lm.model.parameters()}.values())
    assert data["weights_read_per_token_mb"] == round(want / MB, 2)  # MB as in every *_mb figure: 2**20 bytes
    assert data["weights_read_gb_per_s_p50"] == round(want * data["generated_tokens_per_s_p50"] / 1e9, 2)


@pytest.mark.skipif(not onednn_linear_available(), reason="oneDNN products on x86 only")
def test_greedy_decode_multiplies_as_scoring_does_and_gives_generates_tokens(tiny_llama, request):
    lm = drive(load_model(str(tiny_llama)))
    prompt = benchmark_prompt_ids(lm, 30)
    want = reference(lm.model, prompt, 12)
    calls = request.getfixturevalue("onednn_calls")  # counted from here on
    got = list(lm.generate(prompt, max_new_tokens=12, stop_at_eos=False).token_ids)
    assert got == want and lm._onednn is True and lm._greedy_decode_agrees is True
    # One-row products: every decode step after the prompt goes through oneDNN.
    assert sum(1 for shape in calls if shape[-2] == 1) >= 11 * len([m for m in lm.model.modules() if isinstance(m, torch.nn.Linear)])
    assert not any("forward" in m.__dict__ for m in lm.model.modules())


def test_greedy_decode_keeps_the_layers_own_products_where_scoring_does(tiny_model_factory, onednn_calls, monkeypatch):
    from audit.compress.quantize import quantize_int8_dynamic
    from audit.models import torch_lm

    plain = drive(load_model(str(tiny_model_factory("llama"))))
    plain._onednn = False  # as after a self-check that disagreed, or on another machine
    quantized = drive(load_model(str(tiny_model_factory("llama"))))
    quantize_int8_dynamic(quantized.model)
    monkeypatch.setattr(torch_lm, "onednn_linear_available", lambda: True)
    for lm in (plain, quantized):
        prompt = benchmark_prompt_ids(lm, 30)
        want = reference(lm.model, prompt, 8)
        onednn_calls.clear()
        assert list(lm.generate(prompt, max_new_tokens=8, stop_at_eos=False).token_ids) == want
        assert onednn_calls == [] and lm._onednn is False
