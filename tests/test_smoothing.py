"""Activation smoothing for int8: the scales against hand-computed cases, the channel maps found
by probing, folds that leave the model's outputs as they were (and one that would not, undone),
and int8-dynamic built with it: the planted outlier smoothed away instead of kept float."""

import math

import pytest
import torch
from torch import nn

from audit.compress import smoothing
from audit.compress.outliers import OutlierRule, channel_maxima, measure_inputs
from audit.compress.quantize import QuantizeSettings, int8_targets, quantize
from audit.compress.smoothing import Fold, channel_map, find_folds, fold_scales, smooth
from audit.errors import UserError
from audit.models import load_model
from audit.progress import drive
from tests.tiny import make_tiny_model

RULE = OutlierRule(ratio=32.0, nsamples=2, seqlen=64)


def test_scales_match_hand_computation():
    model = nn.Module()
    model.layer = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.layer.weight.copy_(torch.tensor([[1.0, -4.0], [0.5, 2.0], [-0.25, 1.0]]))  # column maxima 1 and 4
    maxima = {"layer": torch.tensor([4.0, 1.0])}
    # s = max|x|^a / max|W|^(1-a): a = 0.5 gives sqrt(4)/sqrt(1) = 2 and sqrt(1)/sqrt(4) = 0.5.
    fold = Fold("producer", ("layer",), torch.tensor([0, 1]))
    assert torch.allclose(fold_scales(model, fold, maxima, 0.5, 2), torch.tensor([2.0, 0.5], dtype=torch.float64))
    # alpha 1: all of the input's range moves, s = max|x|.
    assert torch.allclose(fold_scales(model, fold, maxima, 1.0, 2), torch.tensor([4.0, 1.0], dtype=torch.float64))
    # Both channels read one producer row: one s from the larger input (4) and weight (4) -> 1;
    # a row feeding no channel keeps s = 1, as does a channel whose input is always zero.
    shared = Fold("producer", ("layer",), torch.tensor([1, 1]))
    assert torch.allclose(fold_scales(model, shared, maxima, 0.5, 3), torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    dead = {"layer": torch.tensor([0.0, 1.0])}
    assert torch.allclose(fold_scales(model, fold, dead, 0.5, 2), torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_channel_map_finds_the_factor_of_each_channel_and_refuses_what_is_not_a_copy():
    generator = torch.Generator().manual_seed(0)
    before = torch.randn(6, 4, generator=generator)
    factors = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64)
    rows = torch.tensor([2, 0, 1, 2])
    after = before * factors[rows].float()
    assert torch.equal(channel_map(before, after, factors), rows)
    assert channel_map(before, torch.nn.functional.silu(after), factors) is None  # not a scaled copy
    mixed = after.clone()
    mixed[:, 1] = before[:, 1] * 1.75  # between two factors: its source cannot be told
    assert channel_map(before, mixed, factors) is None
    zero = before.clone()
    zero[:, 3] = 0.0
    assert channel_map(zero, zero * factors[rows].float(), factors) is None


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("smooth") / "llama", "llama")


def _smoothed(folder, alpha=0.7):
    lm = drive(load_model(str(folder)))
    model = lm.model
    names = int8_targets(model)[0]
    maxima, calibration = drive(measure_inputs(lm, model, names, RULE))
    return lm, model, names, maxima, calibration


@torch.no_grad()
def test_llama_folds_keep_its_outputs_and_shrink_its_inputs(llama):
    lm, model, names, maxima, calibration = _smoothed(llama)
    window = calibration.samples[:1]
    before = model(input_ids=calibration.samples).logits
    result = smooth(model, names, maxima, 0.7, window)
    producers = {fold.producer: fold.consumers for fold in result.folds}
    attention, mlp = "model.layers.0.self_attn.", "model.layers.0.mlp."
    assert producers["model.layers.0.input_layernorm"] == tuple(attention + n for n in ("q_proj", "k_proj", "v_proj"))
    assert producers["model.layers.0.post_attention_layernorm"] == (mlp + "gate_proj", mlp + "up_proj")
    assert producers[mlp + "up_proj"] == (mlp + "down_proj",)
    assert producers[attention + "v_proj"] == (attention + "o_proj",)
    assert mlp + "gate_proj" not in producers  # its output goes through SiLU: not a per-channel scale
    assert result.left == {"lm_head": "its weight is shared with another module"}
    assert len(result.layers()) == 14
    # Four heads share two key/value heads of 16 channels: output channel (head h, d) reads
    # value row (h // 2, d).
    folds = {fold.producer: fold for fold in result.folds}
    heads = torch.arange(64) // 16
    assert torch.equal(folds[attention + "v_proj"].rows, (heads // 2) * 16 + torch.arange(64) % 16)
    assert torch.equal(folds[mlp + "up_proj"].rows, torch.arange(128))
    after = model(input_ids=calibration.samples).logits
    assert float((after - before).abs().max()) < 1e-4 * float(before.abs().max())
    # The layers now see their inputs divided by s, as the record's ranges say.
    measured = drive(channel_maxima(model, names, calibration.samples))
    expected = result.smoothed_maxima(maxima)
    for name in names:
        assert torch.allclose(measured[name], expected[name], rtol=1e-4, atol=1e-6), name
    largest = lambda m: max(float(m[name].max() / m[name].median()) for name in result.layers())  # noqa: E731
    assert largest(expected) < largest(maxima)
    assert result.to_dict()["folds"][0] == {"into": "model.layers.0.input_layernorm", "layers": list(producers["model.layers.0.input_layernorm"])}


@torch.no_grad()
def test_smoothing_is_deterministic(llama):
    weights = []
    for _ in range(2):
        lm, model, names, maxima, calibration = _smoothed(llama)
        smooth(model, names, maxima, 0.7, calibration.samples[:1])
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@torch.no_grad()
def test_a_norm_that_is_not_a_per_channel_scale_is_not_folded_into(tmp_path):
    # Gemma's norms multiply by (1 + weight): scaling the weight does not scale the output.
    lm, model, names, maxima, calibration = _smoothed(make_tiny_model(tmp_path / "gemma", "gemma"))
    before = model(input_ids=calibration.samples).logits
    result = smooth(model, names, maxima, 0.7, calibration.samples[:1])
    assert not any(fold.producer.endswith("layernorm") for fold in result.folds)
    assert {fold.producer.rpartition(".")[2] for fold in result.folds} == {"v_proj", "up_proj"}
    assert result.left["model.layers.0.self_attn.q_proj"] == "no module before it scales its input channel by channel"
    assert torch.allclose(model(input_ids=calibration.samples).logits, before, atol=1e-4 * float(before.abs().max()))


@torch.no_grad()
def test_a_fold_that_changes_the_outputs_is_undone(llama, monkeypatch):
    lm, model, names, maxima, calibration = _smoothed(llama)
    window = calibration.samples[:1]
    genuine, left = find_folds(model, names, window[:, : smoothing.PROBE_TOKENS])
    mlp = "model.layers.1.mlp."
    wrong = Fold(mlp + "gate_proj", (mlp + "down_proj",), torch.arange(128))  # through SiLU: not a scale
    folds = [fold for fold in genuine if fold.consumers != (mlp + "down_proj",)] + [wrong]
    monkeypatch.setattr(smoothing, "find_folds", lambda *args: (folds, dict(left)))
    before = model(input_ids=calibration.samples).logits
    result = smooth(model, names, maxima, 0.7, window)
    assert wrong not in result.folds and len(result.folds) == len(folds) - 1
    assert result.left[mlp + "down_proj"] == f"folding into {mlp}gate_proj changed the model's output"
    assert float((model(input_ids=calibration.samples).logits - before).abs().max()) < 1e-4 * float(before.abs().max())
    # Undone exactly: the weights are those the other folds alone give.
    _, alone, _, _, _ = _smoothed(llama)
    others = [Fold(f.producer, f.consumers, f.rows) for f in folds[:-1]]
    monkeypatch.setattr(smoothing, "find_folds", lambda *args: (others, dict(left)))
    smooth(alone, names, maxima, 0.7, window)
    expected = alone.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())


def test_int8_dynamic_smooths_the_planted_outlier_instead_of_keeping_it_float(planted, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The river rose after the storm, and the old stone bridge held. " * 8)
    result = drive(quantize(str(planted), "int8-dynamic", tmp_path / "q", text=text, chunk_tokens=64, settings=QuantizeSettings(outliers=RULE)))
    assert result["kept_float"] == [] and result["smoothed_layers"] == 14 and result["smoothing_alpha"] == 0.7
    unsmoothed = drive(quantize(str(planted), "int8-dynamic", tmp_path / "u", text=text, chunk_tokens=64,
                                settings=QuantizeSettings(outliers=RULE, smoothing=None)))
    assert unsmoothed["kept_float"] == ["model.layers.0.mlp.down_proj"] and unsmoothed["smoothed_layers"] == 0
    assert result["perplexity_after"] == pytest.approx(result["perplexity_before"], rel=0.05)
    variant = drive(load_model(str(tmp_path / "q")))
    notes = [n for n in variant.facts().notes if n.startswith("int8-dynamic: input ranges")]
    assert notes == ["int8-dynamic: input ranges of 14 of 15 int8 layers smoothed into the modules before them "
                     "(SmoothQuant, alpha 0.7); left as is: lm_head"]
    step = variant.facts().to_dict()
    assert step  # the facts serialise with the smoothing recorded
    import json

    meta = json.loads((tmp_path / "q" / "edge_audit.json").read_text())
    recorded = meta["compression"][-1]["quantize"]["smoothing"]
    assert recorded["alpha"] == 0.7 and len(recorded["folds"]) == 8 and recorded["left_as_is"] == {"lm_head": "its weight is shared with another module"}
    assert recorded["scales"]["largest"] > 10  # the planted channel's range moved into up_proj's row


@pytest.mark.parametrize("alpha", [0, 1.5, math.nan, True])
def test_quantize_refuses_a_bad_alpha(llama, tmp_path, alpha):
    with pytest.raises(UserError, match="smoothing alpha"):
        drive(quantize(str(llama), "int8-dynamic", tmp_path / "q", settings=QuantizeSettings(smoothing=alpha)))


def test_quantize_cli_sets_the_smoothing_alpha_or_none(planted, tmp_path, capsys):
    import json

    from tui.cli import main

    base = ["quantize", "--model", str(planted), "--scheme", "int8-dynamic", "--no-perplexity", "--json"]
    assert main(base + ["--smoothing", "0.5", "--out", str(tmp_path / "half")]) == 0
    half = json.loads(capsys.readouterr().out)
    assert half["smoothing_alpha"] == 0.5 and half["smoothed_layers"] > 0
    meta = json.loads((tmp_path / "half" / "edge_audit.json").read_text())
    assert meta["compression"][-1]["quantize"]["smoothing"]["alpha"] == 0.5
    assert main(base + ["--smoothing", "None", "--out", str(tmp_path / "none")]) == 0
    none = json.loads(capsys.readouterr().out)
    assert none["smoothing_alpha"] is None and none["smoothed_layers"] == 0
    # Bad input: one line, exit 2, nothing written.
    for bad, says in (("1.5", "must be above 0 and at most 1, or none; not 1.5"), ("0", "must be above 0"),
                      ("nan", "must be above 0"), ("half", "takes a number above 0 and at most 1, or none; not 'half'")):
        with pytest.raises(SystemExit) as exit_:
            main(base + ["--smoothing", bad, "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and says in err[-1]
    code = main(["quantize", "--model", str(planted), "--scheme", "onnx-int8", "--smoothing", "0.5", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--smoothing applies to int8-dynamic only, not onnx-int8" in err[0]
    assert not (tmp_path / "bad").exists()


def test_scales_of_two_layers_reading_one_input_by_hand():
    # Two layers (2 outputs x 3 inputs each) read one input: s per channel from the larger input
    # and the larger weight column of the two; a channel whose weights are all zero keeps s = 1.
    model = nn.Module()
    model.a = nn.Linear(3, 2, bias=False)
    model.b = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [-3.0, 0.0, 1.0]]))  # column maxima 3, 0, 2
        model.b.weight.copy_(torch.tensor([[0.5, 0.0, -4.0], [1.0, 0.0, 0.0]]))  # column maxima 1, 0, 4
    maxima = {"a": torch.tensor([8.0, 5.0, 1.0]), "b": torch.tensor([2.0, 7.0, 1.0])}  # inputs: 8, 7, 1
    fold = Fold("producer", ("a", "b"), torch.tensor([0, 1, 2]))
    got = fold_scales(model, fold, maxima, 0.5, 3)
    assert got.tolist() == pytest.approx([math.sqrt(8) / math.sqrt(3), 1.0, 1 / math.sqrt(4)], rel=1e-12)
    got = fold_scales(model, fold, maxima, 0.7, 3)
    assert got.tolist() == pytest.approx([8 ** 0.7 / 3 ** 0.3, 1.0, 1 / 4 ** 0.3], rel=1e-12)
    # Scales are held to [1e-4, 1e4]: an input of 1e12 at alpha 1 would divide by 1e12.
    huge = {"a": torch.tensor([1e12, 5.0, 1e-12]), "b": torch.tensor([0.0, 0.0, 0.0])}
    assert fold_scales(model, fold, huge, 1.0, 3).tolist() == pytest.approx([1e4, 1.0, 1e-4])
    # What the smoothed layers see: each input divided by its channel's s.
    fold.scales = fold_scales(model, fold, maxima, 0.5, 3)
    seen = smoothing.Smoothing(0.5, [fold]).smoothed_maxima(maxima)
    assert seen["a"].tolist() == pytest.approx([8 / (math.sqrt(8) / math.sqrt(3)), 5.0, 2.0], rel=1e-6)
