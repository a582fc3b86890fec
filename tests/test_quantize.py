"""Quantization schemes: every variant loads back through the common interface and scores text."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audit import atomic
from audit.compress.methods import PruneSpec
from audit.compress.prune import prune_layers
from audit.compress.quantize import (
    INT8_FILE,
    QUANTIZATION_SCHEMES,
    Int8Embedding,
    QuantizeSettings,
    int8_targets,
    quantize,
    quantize_int8_dynamic,
    smooth_and_choose,
)
from audit.models import load_model
from audit.models.meta import TIED_HEAD_KEY
from audit.progress import drive
from tui.cli import main



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
    # The same smoothing and quantization done in memory give the same integers, scales and scores.
    reference = drive(load_model(str(source)))
    choice, smoothing = drive(smooth_and_choose(reference, reference.model, int8_targets(reference.model)[0], QuantizeSettings(), None))
    assert smoothing.layers() and result["smoothed_layers"] == len(smoothing.layers())
    quantize_int8_dynamic(reference.model, choice.kept_float)
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


def test_int8_dynamic_head_and_embeddings_share_one_int8_table(tiny_llama, tmp_path, text_file):
    from safetensors import safe_open
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    result = run(tiny_llama, "int8-dynamic", tmp_path / "q", text_file, measure_perplexity=False)
    assert result["embeddings"] == "int8 rows of the output head"
    variant = drive(load_model(str(tmp_path / "q")))
    assert any("looked up in the int8 output head's table" in note for note in variant.facts().notes)
    head, embeddings = variant.model.get_output_embeddings(), variant.model.get_input_embeddings()
    assert isinstance(head, DynamicLinear) and isinstance(embeddings, Int8Embedding)
    assert embeddings._ints is head._int8_weight  # one table, held once
    # A looked-up row is the head's int8 row times its channel's scale, by hand.
    weight = head.weight()
    ids = torch.tensor([[3, 0, 3, 11]])
    looked_up = embeddings(ids)
    for j, token in enumerate(ids[0].tolist()):
        by_hand = weight.int_repr()[token].to(torch.float32) * weight.q_per_channel_scales()[token].to(torch.float32)
        assert torch.equal(looked_up[0, j], by_hand)
    assert not json.loads((tmp_path / "q" / "config.json").read_text())["tie_word_embeddings"]
    with safe_open(str(tmp_path / "q" / INT8_FILE), framework="pt") as handle:
        assert not any("embed_tokens" in key for key in handle.keys())
    source = drive(load_model(str(tiny_llama)))
    assert variant.facts().parameters == source.facts().parameters

    # The head kept float stays tied to float embeddings.
    kept = copy.deepcopy(source.model)
    quantize_int8_dynamic(kept, keep_float=["lm_head"])
    assert type(kept.get_input_embeddings()) is torch.nn.Embedding and kept.lm_head.weight is kept.get_input_embeddings().weight
    # An untied model's own float embeddings stay as they are.
    untied = copy.deepcopy(source.model)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone(), requires_grad=False)
    untied.config.tie_word_embeddings = False
    table = untied.get_input_embeddings().weight
    quantize_int8_dynamic(untied)
    assert isinstance(untied.lm_head, DynamicLinear) and untied.get_input_embeddings().weight is table
    # Tied embeddings that do more than look up (scaled, as some architectures' are) keep their
    # float table, and the config is untied, so that loading does not tie it onto the int8 head.
    class Scaled(torch.nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 2.0

    scaled = copy.deepcopy(source.model)
    table = scaled.get_input_embeddings().weight
    embeddings = Scaled(*table.shape)
    embeddings.weight = table
    scaled.model.embed_tokens = embeddings
    quantize_int8_dynamic(scaled)
    assert isinstance(scaled.lm_head, DynamicLinear) and scaled.get_input_embeddings() is embeddings and embeddings.weight is table
    assert not scaled.config.tie_word_embeddings and not hasattr(scaled, "_int8_embeddings")


def test_onnx_int8_names_the_layers_whose_last_block_is_shorter(tmp_path):
    """A block size of 256 over layers of 576 and 1536 input channels: 1536 is six whole blocks,
    576 two and one of 64 (ONNX Runtime pads it); the record said blocks of 256 for all."""
    import onnx
    from onnx import helper

    from audit.compress.quantize import _block_scales, nbits_widths

    nodes = [helper.make_node("MatMulNBits", ["x", f"w{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft", K=k, N=8, bits=8, block_size=256)
             for i, k in enumerate((576, 1536, 576))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 576])],
                              [helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, [1, 8]) for i in range(3)])
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    widths = nbits_widths(onnx.load(str(tmp_path / "model.onnx")).graph)
    assert widths == {576, 1536}
    assert _block_scales(widths, 256) == "per-token (in blocks of 256 input channels; layers of 576 input channels end in a shorter one)"
    assert _block_scales(widths, 32) == "per-token (in blocks of 32 input channels)"


def test_onnx_int8(tiny_llama, tmp_path, text_file, capsys):
    import onnx

    result = run(tiny_llama, "onnx-int8", tmp_path / "q", text_file, settings=QuantizeSettings(block_size=16))
    assert result["backend"] == "onnxruntime" and result["block_size"] == 16
    assert result["activation_scales"] == "per-token (in blocks of 16 input channels)"
    graph = onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False)
    nbits = [{a.name: a.i for a in n.attribute} for n in graph.graph.node if n.op_type == "MatMulNBits"]
    # Every linear layer of the blocks (7 per block, 2 blocks) and the tied output head, whose
    # transposed embeddings are stored for it.
    assert len(nbits) == 15 and not [n for n in graph.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeLinear")]
    assert not [n for n in graph.graph.node if n.op_type in ("MatMul", "Transpose") and "lm_head" in n.name]
    assert {p.key: p.value for p in graph.metadata_props}[TIED_HEAD_KEY] == "model.embed_tokens.weight"
    assert all(a["bits"] == 8 and a["block_size"] == 16 and a["accuracy_level"] == 4 for a in nbits)
    assert "per-token (in blocks of 16 input channels) activation scales" in drive(load_model(str(tmp_path / "q"))).facts().notes[-1]
    variant = drive(load_model(str(tmp_path / "q")))
    assert variant.backend == "onnxruntime" and variant.facts().quantization == "int8"
    assert result["perplexity_after"] == pytest.approx(result["perplexity_before"], rel=0.1)
    assert (tmp_path / "q" / "model.onnx").is_file() and not (tmp_path / "q" / ".export").exists()
    assert json.loads((tmp_path / "q" / "edge_audit.json").read_text())["text_prefix_token"] == "<|endoftext|>"
    assert main(["prune", "--model", str(tmp_path / "q"), "--method", "magnitude", "--out", str(tmp_path / "p")]) == 2
    assert "pruning needs a PyTorch model; this one runs on onnxruntime" in capsys.readouterr().err


def test_a_transposed_stored_weight_is_stored_transposed(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from audit.compress.quantize import store_transposed_weights

    rng = np.random.default_rng(0)
    w, cube = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((2, 2, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="m"),
        helper.make_node("Transpose", ["w"], ["wt2"], name="t2"),  # read by no MatMul: left as it is
        helper.make_node("Relu", ["wt2"], ["z"], name="r"),
        helper.make_node("Transpose", ["cube"], ["ct"], name="t3", perm=[1, 0, 2]),  # not 2-D: left
        helper.make_node("MatMul", ["ct", "ct"], ["c"], name="m3"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z", "c")],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(cube, "cube")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((1, 4)).astype(np.float32)

    def outputs(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    before = outputs(model)
    assert store_transposed_weights(model.graph) == {"wt": "w"}
    assert [n.name for n in model.graph.node] == ["m", "t2", "r", "t3", "m3"]
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert np.array_equal(stored["wt"], w.T)
    for a, b in zip(before, outputs(model)):
        assert np.array_equal(a, b)


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
    # The float graph scored from its cache as in rows, so the variant scores from its cache.
    assert variant.cache_checked
    request = variant.text_request("The river rose after the storm, and the bridge", [" held.", " fell into the water."])
    cached = variant.score([request])
    assert variant._caching
    rows = variant.score([request], strategy="rows")
    assert [a.logprob for a in cached[0]] == pytest.approx([b.logprob for b in rows[0]], abs=1e-3)


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
    for scheme in ("onnx-int4", "onnx-int8"):
        code = main(["quantize", "--model", str(tiny_llama), "--scheme", scheme, "--block-size", "24", "--out", str(tmp_path / "q")])
        assert code == 2 and "block size must be one of 16, 32, 64, 128, 256" in capsys.readouterr().err
    (tmp_path / "q").mkdir()
    code = main(["quantize", "--model", str(tiny_llama), "--scheme", "int8-dynamic", "--out", str(tmp_path / "q")])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_quantizing_into_an_output_another_process_writes_is_refused(tiny_llama, tmp_path, capsys):
    out = tmp_path / "q8"
    half = tmp_path / ".q8.k1ll3d_x.tmp"  # the other writer's folder, being built
    half.mkdir()
    with atomic.writer_lock(out):
        code = main(["quantize", "--model", str(tiny_llama), "--scheme", "int8-dynamic", "--no-perplexity", "--out", str(out)])
    assert code == 2 and f"output folder {out} is being written by another process" in capsys.readouterr().err
    assert half.is_dir() and not out.exists()
    code = main(["quantize", "--model", str(tiny_llama), "--scheme", "int8-dynamic", "--no-perplexity", "--out", str(out)])
    assert code == 0 and [p.name for p in tmp_path.iterdir()] == ["q8"]


def test_quantizing_twice_is_refused(tiny_llama, tmp_path, text_file, capsys):
    run(tiny_llama, "int8-dynamic", tmp_path / "q8", text_file, measure_perplexity=False)
    for scheme in ("int8-dynamic", "onnx-int8"):
        code = main(["quantize", "--model", str(tmp_path / "q8"), "--scheme", scheme, "--no-perplexity", "--out", str(tmp_path / scheme)])
        assert code == 2 and "already int8-quantized" in capsys.readouterr().err
        assert not (tmp_path / scheme).exists()


def test_registry():
    assert QUANTIZATION_SCHEMES.names() == ["int8-dynamic", "onnx-int8", "onnx-int4"]
    assert {e.meta["backend"] for e in QUANTIZATION_SCHEMES} == {"pytorch", "onnxruntime"}
    assert INT8_FILE.endswith(".safetensors") and INT8_FILE != "model.safetensors"


def _nbits_graph(tmp_path, bits: int, weight: np.ndarray, zero_points: np.ndarray | None = None,
                 head: np.ndarray | None = None, tied: bool = False) -> Path:
    """MatMulNBits with K=3, N=2, blocks of 2 (so one padding value per row), then a Relu, then
    with `head` (8-bit, K=2, N=4, one block per row) an output head giving the graph's output."""
    import onnx
    from onnx import helper, numpy_helper

    from audit.models.meta import TIED_HEAD_KEY

    inputs = ["a", "w", "s"] + (["zp"] if zero_points is not None else [])
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.ones((2, 2), np.float32), "s")]
    if zero_points is not None:
        inits.append(numpy_helper.from_array(zero_points, "zp"))
    nodes = [
        helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=3, N=2, bits=bits, block_size=2),
        helper.make_node("Relu", ["y"], ["r"]),
    ]
    if head is not None:
        inits += [numpy_helper.from_array(head, "h"), numpy_helper.from_array(np.ones((4, 1), np.float32), "hs")]
        nodes.append(helper.make_node("MatMulNBits", ["r", "h", "hs"], ["logits"], domain="com.microsoft", K=2, N=4, bits=8, block_size=2))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("logits" if head is not None else "r", onnx.TensorProto.FLOAT, None)], inits,
    )
    model = helper.make_model(graph)
    if tied:
        entry = model.metadata_props.add()
        entry.key, entry.value = TIED_HEAD_KEY, "embed.weight"
    path = tmp_path / f"nbits{bits}{'h' if head is not None else ''}{'t' if tied else ''}.onnx"
    onnx.save(model, str(path))
    return path


def test_block_quantized_weights_are_labelled_and_their_zeros_counted(tmp_path):
    from audit.models.onnx_lm import onnx_weight_facts

    # Row 0: 128, 5 | 128, pad; row 1: 7, 128 | 9, pad. Symmetric: 128 dequantizes to zero. The
    # padding (given as 128 here) is not a weight: 3 zeros of 6.
    weight = np.array([[[128, 5], [128, 128]], [[7, 128], [9, 128]]], dtype=np.uint8)
    facts = onnx_weight_facts(_nbits_graph(tmp_path, 8, weight))
    assert facts == {"parameters": 6 + 4, "weight_sparsity": 0.5, "quantization": "int8"}
    # With zero points per block (row 0: 5 then 0; row 1: 7 then 9): 5 | none; 7 | 9: 3 of 6.
    zero_points = np.array([[5, 0], [7, 9]], dtype=np.uint8)
    assert onnx_weight_facts(_nbits_graph(tmp_path, 8, weight, zero_points))["weight_sparsity"] == 0.5
    zero_points = np.array([[128, 128], [128, 128]], dtype=np.uint8)
    assert onnx_weight_facts(_nbits_graph(tmp_path, 8, weight, zero_points))["weight_sparsity"] == 0.5
    four = onnx_weight_facts(_nbits_graph(tmp_path, 4, np.zeros((2, 2, 1), np.uint8)))
    assert four["quantization"] == "int4-weight-only" and four["weight_sparsity"] is None
    # The output head's zeros are not counted (all 8 of its weights are zeros here); a head stored
    # as the transpose of the embeddings counts once, with them.
    head = np.full((4, 1, 2), 128, np.uint8)
    untied = onnx_weight_facts(_nbits_graph(tmp_path, 8, weight, head=head))
    assert untied == {"parameters": 6 + 4 + 8 + 4, "weight_sparsity": 0.5, "quantization": "int8"}
    assert onnx_weight_facts(_nbits_graph(tmp_path, 8, weight, head=head, tied=True))["parameters"] == 6 + 4 + 4
