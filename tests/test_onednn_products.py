"""Scoring multiplies float32 linear layers through oneDNN where it may: the same scores within
float32 rounding, the layers as they were afterwards, and the layers' own products wherever the
self-check or an int8 layer says so."""

import pytest
import torch
from torch import nn

from audit.models import load_model
from audit.models import torch_lm
from audit.models.torch_lm import onednn_linear_available, onednn_products
from audit.probes.builtin import builtin_items
from audit.probes.scoring import score_request
from audit.progress import drive

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="scoring multiplies through oneDNN on x86 only")


def _requests(model):
    return [score_request(model, item) for item in builtin_items(["religion"])[:4]]


@needs_onednn
def test_a_layer_through_onednn_gives_its_own_products_within_rounding_and_is_put_back():
    layer = nn.Linear(48, 20)
    x = torch.randn(3, 5, 48)
    own = layer(x)
    with onednn_products(layer):
        assert "forward" in layer.__dict__
        fast = layer(x)
    assert "forward" not in layer.__dict__
    assert fast.shape == own.shape
    assert torch.allclose(fast, own, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer(x), own)


@needs_onednn
def test_only_float32_linear_layers_are_swapped():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).to(torch.bfloat16), nn.Embedding(5, 4))
    with onednn_products(model):
        assert ["forward" in m.__dict__ for m in model] == [True, False, False]


@needs_onednn
def test_scoring_multiplies_through_onednn_and_agrees_with_the_layers_own_products(tiny_llama, request, monkeypatch):
    model = drive(load_model(str(tiny_llama)))
    requests = _requests(model)
    calls = request.getfixturevalue("onednn_calls")  # counted from here on
    got = model.score(requests)
    assert model._onednn is True and calls
    monkeypatch.undo()
    model._onednn = False  # the layers' own products
    want = model.score(requests)
    for g, w in zip(got, want):
        assert [s.logprob for s in g] == pytest.approx([s.logprob for s in w], abs=1e-4)
    assert not any("forward" in m.__dict__ for m in model.model.modules())


def test_a_disagreeing_or_failing_check_keeps_the_layers_own_products(tiny_llama, monkeypatch):
    model = drive(load_model(str(tiny_llama)))
    requests = _requests(model)

    class Wrong:  # products 1% off: not float32 rounding
        @staticmethod
        def _linear_pointwise(x, weight, bias, *rest):
            return torch.nn.functional.linear(x, weight, bias) * 1.01

    class Failing:
        @staticmethod
        def _linear_pointwise(*args):
            raise RuntimeError("no kernel for this machine")

    for library in (Wrong(), Failing()):
        model._onednn = None
        monkeypatch.setattr(torch_lm, "onednn_linear_available", lambda: True)
        monkeypatch.setattr(torch_lm.torch.ops, "mkldnn", library, raising=False)
        got = model.score(requests)
        assert model._onednn is False
        monkeypatch.undo()
        # The layers' own products, bit for bit: the check left nothing swapped.
        assert not any("forward" in m.__dict__ for m in model.model.modules())
        assert got == model.score(requests)


def test_int8_models_keep_their_layers_own_products(tiny_model_factory, monkeypatch):
    from audit.compress.quantize import quantize_int8_dynamic

    model = drive(load_model(str(tiny_model_factory("llama"))))
    quantize_int8_dynamic(model.model)
    monkeypatch.setattr(torch_lm, "onednn_linear_available", lambda: True)
    model.score(_requests(model))
    assert model._onednn is False
