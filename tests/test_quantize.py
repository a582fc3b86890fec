"""Quantization schemes: every variant loads back through the common interface and scores text."""

import copy
import json

import pytest
import torch

from audit.compress.methods import PruneSpec
from audit.compress.prune import prune_layers
from audit.compress.quantize import (
    INT8_FILE,
    QUANTIZATION_SCHEMES,
    QuantizeSettings,
    cpu_flags,
    int8_cpu_config,
    quantize,
    quantize_int8_dynamic,
)
from audit.models import load_model
from audit.progress import drive
from tui.cli import main

TEXT = "The river rose after the storm, and the old stone bridge held. " * 8


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text(TEXT)
    return path


def run(model, scheme, out, text_file, **kwargs):
    return drive(quantize(str(model), scheme, out, text=text_file, chunk_tokens=64, **kwargs))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_int8_dynamic_reloads_exactly_and_scores(tiny_model_factory, tmp_path, text_file, arch):
    source = tiny_model_factory(arch)
    result = run(source, "int8-dynamic", tmp_path / "q", text_file)
    assert result["backend"] == "pytorch" and result["quantized_layers"] > 0
    assert result["size_on_disk_mb"] < result["source_size_on_disk_mb"]
    assert result["perplexity_after"] == pytest.approx(result["perplexity_before"], rel=0.05)
    variant = drive(load_model(str(tmp_path / "q")))
    # The same quantization done in memory gives the same integers, scales and scores.
    reference = drive(load_model(str(source)))
    quantize_int8_dynamic(reference.model)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    ours = {n: m for n, m in variant.model.named_modules() if isinstance(m, DynamicLinear)}
    theirs = {n: m for n, m in reference.model.named_modules() if isinstance(m, DynamicLinear)}
    assert set(ours) == set(theirs) and ours
    for name in ours:
        a, b = ours[name].weight(), theirs[name].weight()
        assert torch.equal(a.int_repr(), b.int_repr()) and torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales())
    request = variant.text_request("The river rose", [" after", " the storm"])
    assert [s.logprob for s in variant.score([request])[0]] == [s.logprob for s in reference.score([request])[0]]
    facts = variant.facts()
    assert facts.quantization == "int8-dynamic" and facts.parameters == drive(load_model(str(source))).facts().parameters
    assert variant.generate_chat("hello", max_new_tokens=4).token_ids


def test_onnx_int8(tiny_llama, tmp_path, text_file, capsys):
    result = run(tiny_llama, "onnx-int8", tmp_path / "q", text_file)
    assert result["backend"] == "onnxruntime" and result["cpu_config"] in {"arm64", "avx2", "avx512", "avx512_vnni"}
    variant = drive(load_model(str(tmp_path / "q")))
    assert variant.backend == "onnxruntime" and variant.facts().quantization == "int8"
    assert result["perplexity_after"] == pytest.approx(result["perplexity_before"], rel=0.1)
    assert (tmp_path / "q" / "model.onnx").is_file() and not (tmp_path / "q" / ".export").exists()
    assert json.loads((tmp_path / "q" / "edge_audit.json").read_text())["text_prefix_token"] == "<|endoftext|>"
    assert main(["prune", "--model", str(tmp_path / "q"), "--method", "magnitude", "--out", str(tmp_path / "p")]) == 2
    assert "pruning needs a PyTorch model; this one runs on onnxruntime" in capsys.readouterr().err


def test_onnx_int4(tiny_llama, tmp_path, text_file):
    import onnx

    result = run(tiny_llama, "onnx-int4", tmp_path / "q", text_file, settings=QuantizeSettings(block_size=16))
    assert result["block_size"] == 16 and result["size_on_disk_mb"] < result["source_size_on_disk_mb"]
    graph = onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False)
    nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) >= 14 and all({a.name: a.i for a in n.attribute}["block_size"] == 16 for n in nbits)
    variant = drive(load_model(str(tmp_path / "q")))
    assert variant.facts().quantization == "int4-weight-only"
    assert result["perplexity_after"] == pytest.approx(result["perplexity_before"], rel=0.25)


def test_a_pruned_folder_quantizes_and_keeps_its_zeros(tiny_llama, tmp_path, text_file):
    lm = drive(load_model(str(tiny_llama)))
    model = copy.deepcopy(lm.model)
    drive(prune_layers(model, "magnitude", PruneSpec(0.5)))
    pruned = tmp_path / "pruned"
    model.save_pretrained(pruned)
    lm.tokenizer.save_pretrained(pruned)
    for scheme in ("int8-dynamic", "onnx-int8"):
        result = run(pruned, scheme, tmp_path / scheme, text_file, measure_perplexity=False)
        assert result["weight_sparsity"] == pytest.approx(0.5, abs=0.01), scheme
        assert result["perplexity_after"] is None


def test_bad_quantize_input_is_one_line(tiny_llama, tmp_path, capsys):
    code = main(["quantize", "--model", str(tiny_llama), "--scheme", "int3", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown quantization scheme 'int3'; known: int8-dynamic, onnx-int4, onnx-int8" in err
    code = main(["quantize", "--model", str(tiny_llama), "--scheme", "onnx-int4", "--block-size", "24", "--out", str(tmp_path / "q")])
    assert code == 2 and "block size must be one of 16, 32, 64, 128, 256" in capsys.readouterr().err
    (tmp_path / "q").mkdir()
    code = main(["quantize", "--model", str(tiny_llama), "--scheme", "int8-dynamic", "--out", str(tmp_path / "q")])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_quantizing_twice_is_refused(tiny_llama, tmp_path, text_file, capsys):
    run(tiny_llama, "int8-dynamic", tmp_path / "q8", text_file, measure_perplexity=False)
    for scheme in ("int8-dynamic", "onnx-int8"):
        code = main(["quantize", "--model", str(tmp_path / "q8"), "--scheme", scheme, "--no-perplexity", "--out", str(tmp_path / scheme)])
        assert code == 2 and "already int8-quantized" in capsys.readouterr().err
        assert not (tmp_path / scheme).exists()


def test_int8_config_follows_the_cpu(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512f", "avx512_vnni"}
    assert int8_cpu_config("x86_64", cpu_flags(cpuinfo)) == "avx512_vnni"
    assert int8_cpu_config("x86_64", {"avx2", "avx512f"}) == "avx512"
    assert int8_cpu_config("x86_64", {"avx2"}) == "avx2"
    assert int8_cpu_config("aarch64", {"asimd"}) == "arm64"
    pi = tmp_path / "pi"
    pi.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n")
    assert "asimd" in cpu_flags(pi)
    assert cpu_flags(tmp_path / "missing") == set()


def test_registry():
    assert QUANTIZATION_SCHEMES.names() == ["int8-dynamic", "onnx-int8", "onnx-int4"]
    assert {e.meta["backend"] for e in QUANTIZATION_SCHEMES} == {"pytorch", "onnxruntime"}
    assert INT8_FILE.endswith(".safetensors") and INT8_FILE != "model.safetensors"
