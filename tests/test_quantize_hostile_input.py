"""Quantization given what it should not take: damaged int8 files, weights that are not numbers,
and the definitions its scales follow, checked by hand."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from audit.compress.quantize import INT8_FILE, PER_TENSOR, PER_TOKEN, quantize, quantize_int8_dynamic
from audit.errors import UserError
from audit.models import load_model
from audit.models.meta import WEIGHTS_META_KEY
from audit.progress import drive

LAYER = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def int8_folder(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "q"
    drive(quantize(str(tiny_llama), "int8-dynamic", out, measure_perplexity=False))
    return out


def damaged(int8_folder, tmp_path, tensors=None, meta=None):
    """A copy of the int8 variant whose weights file has its tensors and layout changed."""
    from safetensors import safe_open

    folder = tmp_path / "damaged"
    shutil.copytree(int8_folder, folder)
    with safe_open(str(int8_folder / INT8_FILE), "pt") as handle:
        layout = json.loads(handle.metadata()[WEIGHTS_META_KEY])
    stored = load_file(str(int8_folder / INT8_FILE))
    if tensors is not None:
        tensors(stored)
    if meta is not None:
        layout = meta(layout)
    save_file(stored, str(folder / INT8_FILE), {"format": "pt", WEIGHTS_META_KEY: json.dumps(layout)})
    return folder


def refused(folder) -> str:
    with pytest.raises(UserError) as caught:
        drive(load_model(str(folder)))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_damaged_copy_that_changes_nothing_loads(int8_folder, tmp_path):
    variant = drive(load_model(str(damaged(int8_folder, tmp_path))))
    assert variant.facts().quantization == "int8-dynamic"


def test_an_int8_file_of_an_unknown_format_version_is_refused(int8_folder, tmp_path):
    message = refused(damaged(int8_folder, tmp_path, meta=lambda m: dict(m, version=2)))
    assert INT8_FILE in message and "version 2" in message


@pytest.mark.parametrize("change", [
    lambda m: [m],
    lambda m: dict(m, layers=list(m["layers"])),
    lambda m: dict(m, layers={LAYER: "int8"}),
    lambda m: dict(m, linearized=["model.nope"]),
    lambda m: dict(m, linearized="model.nope"),
    lambda m: dict(m, embeddings_from="lm_head"),
    lambda m: dict(m, layers=dict(m["layers"], **{"model.nope": m["layers"][LAYER]})),
], ids=["not-a-mapping", "layers-a-list", "layer-not-a-mapping", "unknown-linearized", "linearized-a-string",
        "embeddings-from-a-string", "unknown-layer"])
def test_a_malformed_int8_layout_is_one_line(int8_folder, tmp_path, change):
    assert INT8_FILE in refused(damaged(int8_folder, tmp_path, meta=change))


def test_int8_weights_whose_scales_run_along_the_inputs_are_refused(int8_folder, tmp_path):
    # Scales per input column (axis 1) fit a square layer's shape but mean another weight.
    def along_inputs(m):
        m["layers"][LAYER]["axis"] = 1
        return m

    message = refused(damaged(int8_folder, tmp_path, meta=along_inputs))
    assert LAYER in message and "axis" in message


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_int8_scales_that_are_not_positive_numbers_are_refused(int8_folder, tmp_path, scale):
    def spoil(stored):
        scales = stored[f"{LAYER}.weight_scale"].clone()
        scales[3] = scale
        stored[f"{LAYER}.weight_scale"] = scales

    message = refused(damaged(int8_folder, tmp_path, tensors=spoil))
    assert LAYER in message and "scale" in message


def test_int8_weights_of_another_shape_than_the_layer_are_refused(int8_folder, tmp_path):
    def widen(stored):
        ints = stored[f"{LAYER}.weight_int8"]
        stored[f"{LAYER}.weight_int8"] = torch.cat([ints, ints], dim=1)

    def say_wider(m):
        m["layers"][LAYER]["in_features"] *= 2
        return m

    message = refused(damaged(int8_folder, tmp_path, tensors=widen, meta=say_wider))
    assert LAYER in message and "shape" in message


@pytest.mark.parametrize("scheme", ["int8-dynamic", "onnx-int8", "onnx-int4"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_that_are_not_numbers_are_refused_naming_the_layer_before_any_work(tiny_llama, tmp_path, monkeypatch, scheme, value):
    source = tmp_path / "source"
    shutil.copytree(tiny_llama, source)
    weights = next(source.glob("*.safetensors"))
    stored = load_file(str(weights))
    stored["model.layers.0.mlp.down_proj.weight"][2, 5] = value
    save_file(stored, str(weights), {"format": "pt"})

    def no_work(*args, **kwargs):
        raise AssertionError("calibrated or exported a model whose weights are not numbers")

    monkeypatch.setattr("audit.compress.quantize.measure_inputs", no_work)
    monkeypatch.setattr("audit.compress.quantize.detect_outliers", no_work)
    monkeypatch.setattr("audit.compress.quantize._export_onnx", no_work)
    with pytest.raises(UserError, match=r"model\.layers\.0\.mlp\.down_proj: its weights hold NaN or infinity"):
        drive(quantize(str(source), scheme, tmp_path / "q", measure_perplexity=False))
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("activation_scales", [PER_TOKEN, PER_TENSOR])
def test_int8_weights_take_one_scale_per_output_row_by_hand_and_a_zero_row_divides_by_nothing(activation_scales):
    # PyTorch's symmetric int8 weights: scale = max |w| of the row / 127.5 (half the 255 steps of
    # [-128, 127]), levels round(w / scale) clamped to [-128, 127]; a row of zeros gets the
    # smallest scale float32 has (its epsilon) and levels 0.
    holder = nn.Module()
    holder.fc = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        holder.fc.weight.copy_(torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [2.0, -1.0, 0.3]]))
    quantize_int8_dynamic(holder, activation_scales=activation_scales)
    weight = holder.fc.weight()
    # Row 0: 1 / (1/127.5) = 127.5 -> 127 (clamped), -0.5 -> -63.75 -> -64, 0.25 -> 31.875 -> 32;
    # row 2: 2 -> 127.5 -> 127, -1 -> -63.75 -> -64, 0.3 -> 19.125 -> 19.
    assert weight.int_repr().tolist() == [[127, -64, 32], [0, 0, 0], [127, -64, 19]]
    eps = torch.finfo(torch.float32).eps
    assert weight.q_per_channel_scales().tolist() == pytest.approx([1 / 127.5, eps, 2 / 127.5], rel=1e-6)
    assert weight.q_per_channel_zero_points().tolist() == [0, 0, 0]
    out = holder.fc(torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 4.0]]))
    assert bool(torch.isfinite(out).all()) and out[:, 1].tolist() == [0.0, 0.0]


def test_an_onnx_export_that_fails_is_one_line_and_leaves_no_folder(tiny_llama, tmp_path, monkeypatch, capsys):
    from optimum.exporters import onnx as exporter

    from tui.cli import main

    def fails(*args, **kwargs):
        raise ValueError("Trying to export a tiny model, that is a custom or unsupported architecture,\nbut no custom onnx configuration was passed")

    monkeypatch.setattr(exporter, "onnx_export_from_model", fails)
    code = main(["quantize", "--model", str(tiny_llama), "--scheme", "onnx-int4", "--no-perplexity", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "ONNX export" in err and "custom or unsupported architecture" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q*"))


def test_an_onnx_exporter_that_does_not_import_is_one_line(tiny_llama, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx", None)  # import raises ImportError
    with pytest.raises(UserError, match="ONNX export needs optimum") as caught:
        drive(quantize(str(tiny_llama), "onnx-int4", tmp_path / "q", measure_perplexity=False))
    assert "\n" not in str(caught.value) and not (tmp_path / "q").exists()


def test_an_onnx_runtime_quantizer_that_does_not_import_or_fails_is_one_line(tiny_llama, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime.quantization.matmul_nbits_quantizer", None)  # import raises ImportError
    with pytest.raises(UserError, match="needs ONNX Runtime's block quantizer") as caught:
        drive(quantize(str(tiny_llama), "onnx-int4", tmp_path / "q", measure_perplexity=False))
    assert "\n" not in str(caught.value) and not (tmp_path / "q").exists()
    monkeypatch.undo()

    from onnxruntime.quantization import matmul_nbits_quantizer

    def fails(self):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed:\nbad graph")

    monkeypatch.setattr(matmul_nbits_quantizer.MatMulNBitsQuantizer, "process", fails)
    with pytest.raises(UserError, match="ONNX Runtime's 4-bit quantization failed: .*Load model failed") as caught:
        drive(quantize(str(tiny_llama), "onnx-int4", tmp_path / "q", measure_perplexity=False))
    assert "\n" not in str(caught.value) and not (tmp_path / "q").exists()


def test_an_int8_layer_tensor_the_layout_does_not_read_is_refused(int8_folder, tmp_path):
    # A bias stored for a layer the layout says has none would be dropped without a word.
    def add_bias(stored):
        stored[f"{LAYER}.bias"] = torch.ones(stored[f"{LAYER}.weight_int8"].shape[0])

    message = refused(damaged(int8_folder, tmp_path, tensors=add_bias))
    assert f"{LAYER}.bias" in message


def test_an_output_beside_a_gguf_source_is_not_inside_it(tiny_llama, tmp_path, isolated_cache):
    # A GGUF model is its file alone: a folder beside it is neither the model nor inside it; the
    # folder holding it, replaced, would take the model with it.
    from audit.compress.output import check_output_target
    from tests.test_model_integrity import tiny_gguf

    models = tmp_path / "models"
    models.mkdir()
    gguf = tiny_gguf(tiny_llama, models / "tiny.gguf")
    check_output_target(str(gguf), models / "tiny-int8", force=False)
    with pytest.raises(UserError, match="would overwrite or sit inside the source model"):
        check_output_target(str(gguf), models, force=True)


@pytest.mark.parametrize("scheme", ["int8-dynamic", "onnx-int8", "onnx-int4"])
def test_a_quantized_source_is_refused_before_its_perplexity_is_measured(int8_folder, tiny_llama, tmp_path, text_file, monkeypatch, scheme):
    onnx4 = tmp_path / "onnx4"
    drive(quantize(str(tiny_llama), "onnx-int4", onnx4, measure_perplexity=False))

    def measured(*args, **kwargs):
        raise AssertionError("measured the perplexity of a source it then refused")

    monkeypatch.setattr("audit.compress.quantize.perplexity", measured)
    onnx_said = "needs a PyTorch model; this one runs on onnxruntime" if scheme == "int8-dynamic" else "already quantized"
    for source, said in ((int8_folder, "already int8-quantized"), (onnx4, onnx_said)):
        with pytest.raises(UserError, match=said):
            drive(quantize(str(source), scheme, tmp_path / "q", text=text_file, chunk_tokens=64))
        assert not (tmp_path / "q").exists()
