"""Outlier-aware int8: the input-range statistic, detection of a planted outlier layer, the
layer kept float in both int8 schemes, per-token activation scales, and the facts naming it."""

import json
import math

import pytest
import torch
from torch import nn

from audit.compress.outliers import InputRange, OutlierRule, detect_outliers, input_range, outlier_layers
from audit.compress.quantize import (
    PER_TENSOR,
    QuantizeSettings,
    int8_targets,
    onnx_weight_nodes,
    quantize,
    quantize_int8_dynamic,
    use_per_token_scales,
)
from audit.errors import UserError
from audit.models import load_model
from audit.progress import drive

PLANTED = "model.layers.0.mlp.down_proj"
RULE = OutlierRule(ratio=32.0, nsamples=2, seqlen=64)


def test_input_range_is_max_over_lower_median_channel():
    r = input_range("x", torch.tensor([1.0, 2.0, 3.0, 100.0]))
    # max 100 in channel 3; lower median of (1, 2, 3, 100) is 2.
    assert (r.max_abs, r.channel, r.typical_abs, r.ratio) == (100.0, 3, 2.0, 50.0)
    assert outlier_layers([r], 49.0) == ["x"] and outlier_layers([r], 50.0) == []
    assert input_range("z", torch.zeros(3)).ratio == 1.0
    assert math.isinf(InputRange("s", 4.0, 0, 0.0).ratio)
    with pytest.raises(UserError):
        OutlierRule(ratio=0.5)


def test_planted_outlier_is_detected_and_only_it(planted):
    lm = drive(load_model(str(planted)))
    names = int8_targets(lm.model)[0]
    choice = drive(detect_outliers(lm, lm.model, names, RULE))
    ratios = {r.name: r.ratio for r in choice.ranges}
    assert choice.kept_float == (PLANTED,)
    assert ratios[PLANTED] > 100 and max(v for k, v in ratios.items() if k != PLANTED) < RULE.ratio
    again = drive(detect_outliers(lm, lm.model, names, RULE))
    assert again.to_dict() == choice.to_dict()  # deterministic
    assert not any(h for m in lm.model.modules() for h in m._forward_pre_hooks.values())  # hooks removed


def test_per_token_scales_match_hand_computation_and_beat_per_tensor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    reference = nn.Linear(16, 8)
    reference.load_state_dict(model[0].state_dict())
    quantize_int8_dynamic(model)
    layer = use_per_token_scales(model[0])
    x = torch.randn(3, 16)
    x[0, 2] = 500.0  # one token with a huge value
    weight = layer.weight()
    w = weight.int_repr().to(torch.float64) * weight.q_per_channel_scales().to(torch.float64)[:, None]
    scale = x.abs().amax(-1, keepdim=True).to(torch.float64) / 127
    q = torch.round(x.to(torch.float64) / scale).clamp(-127, 127)
    expected = (q * scale) @ w.t() + layer.bias().to(torch.float64)
    got = layer(x)
    assert torch.allclose(got.to(torch.float64), expected, rtol=1e-5, atol=1e-4)
    # The small tokens keep their precision per token; one scale per tensor crushes them.
    per_tensor = nn.Sequential(nn.Linear(16, 8))
    per_tensor.load_state_dict({"0." + k: v for k, v in reference.state_dict().items()})
    quantize_int8_dynamic(per_tensor, activation_scales=PER_TENSOR)
    exact = reference(x)
    err_token = (got[1:] - exact[1:]).abs().max()
    err_tensor = (per_tensor(x)[1:] - exact[1:]).abs().max()
    assert err_token * 10 < err_tensor


def test_a_single_token_gets_the_levels_it_gets_among_others():
    """Decode steps (one token) may take FBGEMM's kernel; scoring (many tokens) takes
    torch._int_mm. Both quantize alike, so a token's output does not depend on the path."""
    torch.manual_seed(1)
    for n_in, n_out, bias in ((64, 32, True), (576, 96, False)):
        model = nn.Sequential(nn.Linear(n_in, n_out, bias=bias))
        quantize_int8_dynamic(model)
        layer = model[0]
        weight = layer.weight()
        w = weight.int_repr().to(torch.float64) * weight.q_per_channel_scales().to(torch.float64)[:, None]
        for trial in range(200):
            x = torch.randn(1, n_in) * (10.0, 0.01, 3e20, 7e-21)[trial % 4]  # the scale's rounding at any magnitude
            x[0, trial % n_in] *= 50.0
            alone = layer(x)
            among = layer(torch.cat([torch.randn(2, n_in), x]))[2:]
            assert torch.equal(alone, among)
            scale = x.abs().amax().to(torch.float64) / 127
            expected = torch.round(x.to(torch.float64) / scale) * scale @ w.t()
            if bias:
                expected += layer.bias().detach().to(torch.float64)
            assert torch.allclose(alone.to(torch.float64), expected, rtol=1e-5, atol=1e-4 * float(expected.abs().max()))
        assert torch.equal(layer(torch.zeros(1, n_in)), layer(torch.zeros(3, n_in))[:1])  # a zero token: the bias alone


def test_int8_dynamic_keeps_the_outlier_float_and_says_so(planted, tmp_path, text_file):
    out = tmp_path / "q"
    unsmoothed = QuantizeSettings(outliers=RULE, smoothing=None)  # smoothing would move the planted range into up_proj
    result = drive(quantize(str(planted), "int8-dynamic", out, text=text_file, chunk_tokens=64, settings=unsmoothed))
    assert result["kept_float"] == [PLANTED] and result["activation_scales"] == "per-token"
    variant = drive(load_model(str(out)))
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert type(variant.model.get_submodule(PLANTED)) is nn.Linear
    quantized = [m for m in variant.model.modules() if isinstance(m, DynamicLinear)]
    assert len(quantized) == 2 * 7 - 1 + 1  # every linear layer of both blocks but the planted one, and the head
    assert all(getattr(m, "activation_scales", None) == "per-token" for m in quantized)
    notes = [n for n in variant.facts().notes if n.startswith("int8-dynamic:")]
    assert notes and "int8 except 1 outlier layer kept float: " + PLANTED in notes[0] and "per-token" in notes[0]
    assert "32" in notes[0]  # the rule's threshold is named
    assert result["perplexity_after"] == pytest.approx(result["perplexity_before"], rel=0.05)
    # Per tensor, on request: stored and reloaded as PyTorch's own layers.
    drive(quantize(str(planted), "int8-dynamic", tmp_path / "t", text=text_file, chunk_tokens=64,
                   settings=QuantizeSettings(outliers=RULE, activation_scales=PER_TENSOR, smoothing=None), measure_perplexity=False))
    plain = drive(load_model(str(tmp_path / "t")))
    assert all(not hasattr(m, "activation_scales") for m in plain.model.modules() if isinstance(m, DynamicLinear))


def test_onnx_int8_excludes_the_outlier_node(planted, tmp_path, text_file):
    import onnx

    out = tmp_path / "o"
    result = drive(quantize(str(planted), "onnx-int8", out, text=text_file, chunk_tokens=64, settings=QuantizeSettings(outliers=RULE)))
    assert result["kept_float"] == [PLANTED] and len(result["kept_float_nodes"]) == 1
    graph = onnx.load(str(out / "model.onnx")).graph
    by_name = {node.name: node for node in graph.node}
    kept = by_name[result["kept_float_nodes"][0]]
    assert kept.op_type == "MatMul"  # still the float product
    assert any(node.op_type == "MatMulNBits" for node in graph.node)
    # The node found by weight values is the planted layer's: its weight is that layer's, transposed.
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(str(planted))
    variant = drive(load_model(str(out)))
    assert any(PLANTED in n and "onnx-int8" in n for n in variant.facts().notes)
    assert variant.cache_checked  # on the float graph, before its activations were rounded to int8
    with pytest.raises(UserError):
        onnx_weight_nodes(out / "model.onnx", {"missing": torch.ones(3, 7)})
    assert source.get_submodule(PLANTED).weight.shape[1] == 128


def test_the_rule_names_the_windows_it_was_judged_over_when_the_model_shortens_them(tiny_llama, tmp_path):
    # The tiny model's context is 256 tokens: the default rule's 512-token windows are cut to it,
    # and the note, the record and the result say 256, as the calibration facts do.
    from audit.compress.calibration import CalibrationSet
    from audit.compress.outliers import choose_outliers

    windows = CalibrationSet(torch.zeros((3, 40), dtype=torch.long), "a text", 1000, 0)
    choice = choose_outliers(OutlierRule(ratio=4.0, nsamples=3, seqlen=512), ["x"], {"x": torch.tensor([1.0, 2.0, 9.0])}, windows)
    assert choice.kept_float == ("x",) and "3 calibration windows of 40 tokens" in choice.note("int8-dynamic")
    assert choice.to_dict()["rule"]["seqlen"] == 40 == choice.to_dict()["calibration"]["seqlen"]

    result = drive(quantize(str(tiny_llama), "int8-dynamic", tmp_path / "q", measure_perplexity=False))
    assert "windows of 256 tokens" in result["outlier_rule"]
    meta = json.loads((tmp_path / "q" / "edge_audit.json").read_text())
    outliers = meta["compression"][-1]["quantize"]["outliers"]
    assert outliers["rule"]["seqlen"] == outliers["calibration"]["seqlen"] == 256
    assert any("windows of 256 tokens" in note for note in meta["notes"])
