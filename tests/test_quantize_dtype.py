"""Load dtypes and quantization schemes: a combination a scheme cannot take is refused in one
line before any work, and a written variant is put in place only once it loads and scores."""

import json
import math

import pytest

import audit.compress.quantize as quantize_module
from audit.compress.quantize import QUANTIZATION_SCHEMES, SCHEME_DTYPES, quantize
from audit.errors import UserError
from audit.models import load_model
from audit.models.loader import DTYPES, LoadOptions
from audit.progress import drive
from tui.cli import main



def _no_load(*args, **kwargs):
    raise AssertionError("a refused quantization loaded a model")


def test_every_scheme_says_which_dtypes_it_takes():
    assert set(SCHEME_DTYPES) == set(QUANTIZATION_SCHEMES.names())
    for dtypes, why in SCHEME_DTYPES.values():
        assert "float32" in dtypes and set(dtypes) <= set(DTYPES) and (why or set(dtypes) == set(DTYPES))


@pytest.mark.parametrize(
    "scheme, dtype",
    [("int8-dynamic", "float16"), ("int8-dynamic", "bfloat16"), ("onnx-int8", "bfloat16"), ("onnx-int4", "bfloat16")],
)
def test_a_dtype_the_scheme_cannot_take_is_refused_in_one_line_before_any_work(planted, tmp_path, text_file, capsys, monkeypatch, scheme, dtype):
    monkeypatch.setattr(quantize_module, "load_model", _no_load)
    out = tmp_path / "q"
    code = main([
        "quantize", "--model", str(planted), "--scheme", scheme, "--dtype", dtype,
        "--text", str(text_file), "--chunk", "64", "--out", str(out), "--json",
    ])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and f"--dtype {dtype} cannot be used with {scheme}" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_the_core_refuses_as_the_command_line_does(tiny_llama, tmp_path, monkeypatch):
    """The app and audit runs call the core, not the command line: they get the same refusal."""
    monkeypatch.setattr(quantize_module, "load_model", _no_load)
    with pytest.raises(UserError, match=r"--dtype float16 cannot be used with int8-dynamic: .*; use --dtype float32$"):
        drive(quantize(str(tiny_llama), "int8-dynamic", tmp_path / "q", options=LoadOptions(dtype="float16")))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scheme", ["onnx-int8", "onnx-int4"])
def test_onnx_schemes_quantize_a_float16_model_into_a_variant_that_scores(tiny_llama, tmp_path, text_file, capsys, scheme):
    out = tmp_path / "q"
    code = main([
        "quantize", "--model", str(tiny_llama), "--scheme", scheme, "--dtype", "float16", "--block-size", "16",
        "--text", str(text_file), "--chunk", "64", "--out", str(out), "--json",
    ])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and math.isfinite(result["perplexity_after"])
    variant = drive(load_model(str(out)))
    assert variant.backend == "onnxruntime" and variant.score([variant.text_request("The river", [" rose"])])[0][0].n_tokens


@pytest.mark.parametrize("measure_perplexity", [True, False])
def test_a_variant_that_does_not_score_is_not_put_in_place(planted, tmp_path, text_file, monkeypatch, measure_perplexity):
    """Were int8-dynamic let quantize a float16 model, the variant would be written but fail at
    its first product (a layer kept float meets float32 activations): the folder must not
    appear, and one it was to replace stays as it was."""
    monkeypatch.setitem(SCHEME_DTYPES, "int8-dynamic", (("float32", "float16"), ""))
    with pytest.raises(RuntimeError, match="same dtype"):
        drive(quantize(str(planted), "int8-dynamic", tmp_path / "new", options=LoadOptions(dtype="float16"),
                       measure_perplexity=measure_perplexity, text=text_file, chunk_tokens=64))
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "q"
    out.mkdir()
    (out / "kept.txt").write_text("the earlier variant")
    with pytest.raises(RuntimeError, match="same dtype"):
        drive(quantize(str(planted), "int8-dynamic", out, force=True, options=LoadOptions(dtype="float16"),
                       measure_perplexity=measure_perplexity, text=text_file, chunk_tokens=64))
    assert [p.name for p in tmp_path.iterdir()] == ["q"] and [p.name for p in out.iterdir()] == ["kept.txt"]
