"""A model's weights that are not what they claim to be are refused in one line naming the file and
the problem, never loaded as they are: weights that do not fill the model their config describes,
on every way a model is loaded, are never measured with what transformers made up for them."""

import json
import re
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file

from audit.compress.storage import SPARSE_FILE, dense_state, load_sparse, save_sparse
from audit.errors import UserError
from audit.models import LoadOptions, load_model
from audit.models.loader import cache_entry_for_gguf, prepare_gguf
from audit.models.meta import SPARSE_FORMAT, WEIGHTS_META_KEY, write_meta
from audit.progress import drive
from tests.conftest import SHORT_TEXT, run_cli

GATE = "model.layers.0.mlp.gate_proj.weight"


def load(spec):
    return drive(load_model(str(spec), LoadOptions(threads=1)))


def refused(spec, pattern):
    with pytest.raises(UserError, match=pattern) as caught:
        load(spec)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def edit_weights(folder, edit, file="model.safetensors"):
    """Rewrite one safetensors file of `folder` after `edit` changed its tensors in place."""
    tensors = {name: tensor.clone() for name, tensor in load_file(folder / file).items()}
    edit(tensors)
    save_file(tensors, folder / file, metadata={"format": "pt"})


@pytest.fixture()
def model(tiny_llama, tmp_path):
    return shutil.copytree(tiny_llama, tmp_path / "m")


# -- plain folders -------------------------------------------------------------------------------------
def test_a_folder_lacking_a_tensor_is_refused_naming_it(model):
    edit_weights(model, lambda tensors: tensors.pop(GATE))
    message = refused(model, f"its weights lack a tensor a LlamaForCausalLM needs, which would hold made-up values: {GATE}$")
    assert str(model) in message


def test_many_missing_tensors_are_counted(model):
    """Weights saved under another prefix fill nothing: the first few are named, the rest counted."""
    edit_weights(model, lambda tensors: tensors.update({f"transformer.{k}": tensors.pop(k) for k in list(tensors)}))
    refused(model, r"its weights lack \d+ tensors a LlamaForCausalLM needs, which would hold made-up values: .+ and \d+ more$")


def test_an_untied_head_that_is_missing_is_refused(tiny_model_factory, tmp_path):
    folder = shutil.copytree(tiny_model_factory("mistral"), tmp_path / "m")
    edit_weights(folder, lambda tensors: tensors.pop("lm_head.weight"))
    refused(folder, r"lack a tensor a MistralForCausalLM needs, which would hold made-up values: lm_head.weight$")


def test_a_tied_pair_stored_only_as_the_head_is_refused(model):
    """transformers reports nothing missing here yet leaves the shared table without values."""
    edit_weights(model, lambda tensors: tensors.__setitem__("lm_head.weight", tensors.pop("model.embed_tokens.weight")))
    refused(model, r"lack a tensor a LlamaForCausalLM needs, which would hold made-up values: model.embed_tokens.weight$")


def test_tensors_of_a_deeper_model_are_refused(model):
    edit_weights(model, lambda tensors: tensors.__setitem__("model.layers.2.mlp.gate_proj.weight", tensors[GATE].clone()))
    refused(model, r"its weights hold a tensor a LlamaForCausalLM has no place for, so they are not this model's weights: model.layers.2.mlp.gate_proj.weight$")


def shard(folder, first):
    """Split the weights of `folder` in two shards named by an index, the tensors in `first` in the first."""
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    parts = {"a.safetensors": {k: v for k, v in tensors.items() if k in first}, "b.safetensors": {k: v for k, v in tensors.items() if k not in first}}
    for file, part in parts.items():
        save_file(part, folder / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {name: file for file, part in parts.items() for name in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("sharded", [False, True], ids=["one file", "head in another shard"])
def test_a_stored_head_a_tied_config_would_replace_is_refused(model, sharded):
    """transformers ties the head to the embeddings, as config.json asks, and drops the other head
    the weights store without a word: the model measured would not be the one in the file."""
    edit_weights(model, lambda tensors: tensors.__setitem__("lm_head.weight", tensors["model.embed_tokens.weight"] + 0.5))
    if sharded:
        shard(model, {"lm_head.weight"})
    message = refused(
        model,
        r"its config.json ties lm_head.weight to model.embed_tokens.weight \(tie_word_embeddings\), but the lm_head.weight its weights "
        r"store differs from model.embed_tokens.weight and would be replaced by it: the config is likely wrong \(set tie_word_embeddings to false",
    )
    assert message.startswith(f"cannot load the model in {model}: ")


@pytest.mark.parametrize("sharded", [False, True], ids=["one file", "head in another shard"])
def test_a_stored_head_equal_to_the_embeddings_loads(model, sharded):
    edit_weights(model, lambda tensors: tensors.__setitem__("lm_head.weight", tensors["model.embed_tokens.weight"].clone()))
    if sharded:
        shard(model, {"lm_head.weight"})
    assert load(model).facts().parameters > 0


def pickled(folder, head_apart=False, legacy=False):
    """Store the weights of `folder` as pickle files, as transformers reads them: one
    pytorch_model.bin, or (`head_apart`) two shards named by its index, the head in the second."""
    import torch

    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    options = {"_use_new_zipfile_serialization": False} if legacy else {}
    if not head_apart:
        torch.save(tensors, folder / "pytorch_model.bin", **options)
        return
    parts = {"a.bin": {k: v for k, v in tensors.items() if k != "lm_head.weight"}, "b.bin": {"lm_head.weight": tensors["lm_head.weight"]}}
    for file, part in parts.items():
        torch.save(part, folder / file, **options)
    index = {"metadata": {}, "weight_map": {name: file for file, part in parts.items() for name in part}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def load_pickled(folder):
    return drive(load_model(str(folder), LoadOptions(threads=1, allow_pickle=True)))


@pytest.mark.parametrize("layout", ["one file", "head in another shard", "format before zip files"])
def test_a_pickled_head_a_tied_config_would_replace_is_refused(model, layout):
    """The same check on pickle weights (--allow-pickle): read as transformers reads them, tensors only."""
    edit_weights(model, lambda tensors: tensors.__setitem__("lm_head.weight", tensors["model.embed_tokens.weight"] + 0.5))
    pickled(model, head_apart=layout == "head in another shard", legacy=layout == "format before zip files")
    with pytest.raises(UserError, match=r"its config.json ties lm_head.weight to model.embed_tokens.weight \(tie_word_embeddings\), but the "
                       r"lm_head.weight its weights store differs") as caught:
        load_pickled(model)
    assert str(caught.value).startswith(f"cannot load the model in {model}: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize("head_apart", [False, True], ids=["one file", "head in another shard"])
def test_a_pickled_head_equal_to_the_embeddings_loads(model, head_apart):
    edit_weights(model, lambda tensors: tensors.__setitem__("lm_head.weight", tensors["model.embed_tokens.weight"].clone()))
    pickled(model, head_apart=head_apart)
    assert load_pickled(model).facts().parameters > 0


def test_a_pickle_index_naming_a_shard_outside_the_folder_is_refused(model, tmp_path):
    edit_weights(model, lambda tensors: tensors.__setitem__("lm_head.weight", tensors["model.embed_tokens.weight"].clone()))
    pickled(model, head_apart=True)
    shutil.move(model / "b.bin", tmp_path / "b.bin")
    index = json.loads((model / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "../b.bin"
    (model / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"pytorch_model.bin.index.json names weight shard '../b.bin', which is not a file of the folder itself$"):
        load_pickled(model)


class Foreign:
    """An object a pickle may hold that is not a tensor: loading it would run this module's code."""


def cut_short(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, message", [
    (cut_short, "cannot read {file} as PyTorch weights: it is damaged or cut short: its zip archive cannot be read$"),
    (lambda path: path.write_bytes(b""), "cannot read {file} as PyTorch weights: the file is empty or cut short$"),
    (lambda path: path.write_bytes(b"not a pickle" * 50), "cannot read {file} as PyTorch weights: it is not a PyTorch weights file$"),
    (lambda path: __import__("torch").save({"a": Foreign()}, path),
     r"cannot read {file} as PyTorch weights: it holds objects other than tensors, which are not loaded \(loading them could run code\)$"),
    (lambda path: __import__("torch").save([1, 2], path), r"{file} holds no weights \(a dict of named tensors\) but a list$"),
    (lambda path: __import__("torch").save({"w": 3}, path), r"{file} holds 'w', a int, where weights hold only named tensors$"),
], ids=["cut short", "empty", "not a pickle", "objects", "a list", "a number"])
def test_damaged_pickle_weights_are_refused_in_one_line(model, damage, message):
    """What transformers gives a traceback or a hint about TensorFlow for is named here."""
    pickled(model)
    damage(model / "pytorch_model.bin")
    with pytest.raises(UserError, match=message.format(file=re.escape(str(model / "pytorch_model.bin")))) as caught:
        load_pickled(model)
    assert "\n" not in str(caught.value)


def test_pickle_weights_under_a_name_they_are_not_loaded_from_are_refused(model):
    pickled(model)
    (model / "pytorch_model.bin").rename(model / "model.pt")
    with pytest.raises(UserError, match=r"holds pickle weights \(model.pt\) but none under the names they are loaded from: pytorch_model.bin, "
                                        r"or the shards pytorch_model.bin.index.json names$"):
        load_pickled(model)


def test_the_command_line_refuses_damaged_pickle_weights_in_one_line(model, tmp_path):
    pickled(model)
    cut_short(model / "pytorch_model.bin")
    text = tmp_path / "t.txt"
    text.write_text(SHORT_TEXT)
    result = run_cli("perplexity", "--model", str(model), "--allow-pickle", "--text", str(text), "--threads", "1",
                     env={"EDGE_AUDIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "as PyTorch weights: it is damaged or cut short" in result.stderr


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt2", "opt"])
def test_whole_folders_load_tied_heads_included(tiny_model_factory, arch):
    """Every tiny architecture, tied (llama, gemma, gpt2, opt) or not, loads: a tied head's
    absent copy is not a missing tensor."""
    assert load(tiny_model_factory(arch)).facts().parameters > 0


def test_the_command_line_refuses_a_missing_tensor_in_one_line(tiny_llama, tmp_path):
    folder = shutil.copytree(tiny_llama, tmp_path / "m")
    edit_weights(folder, lambda tensors: tensors.pop(GATE))
    text = tmp_path / "t.txt"
    text.write_text(SHORT_TEXT)
    result = run_cli("perplexity", "--model", str(folder), "--text", str(text), "--threads", "1", env={"EDGE_AUDIT_CACHE": str(tmp_path / "cache")})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and GATE in lines[0] and "Traceback" not in result.stderr
    assert result.stdout == ""


# -- a GGUF file, converted once ------------------------------------------------------------------------
_GGUF_PARTS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def tiny_gguf(folder, path, drop=()):
    """The tiny llama in `folder` as a float32 GGUF file, without the GGUF tensors in `drop`."""
    import gguf

    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())["model"]
    tokens = [token for token, _ in sorted(tokenizer["vocab"].items(), key=lambda item: item[1])]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["merges"]])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for name, array in load_numpy(folder / "model.safetensors").items():
        if name.startswith("model.layers."):
            _, _, layer, *part = name.split(".")
            name = f"blk.{layer}.{_GGUF_PARTS['.'.join(part[:-1])]}.weight"
        else:
            name = names[name]
        if name not in drop:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_lacking_a_tensor_is_refused_and_not_cached(tiny_llama, tmp_path, isolated_cache):
    whole = tiny_gguf(tiny_llama, tmp_path / "whole.gguf")
    assert load(whole).facts().parameters > 0
    lacking = tiny_gguf(tiny_llama, tmp_path / "lacking.gguf", drop=("blk.0.ffn_gate.weight",))
    message = refused(lacking, f"cannot convert {lacking}: its weights lack a tensor a LlamaForCausalLM needs, which would hold made-up values: {GATE}$")
    assert message
    converted = [p.name for p in (isolated_cache / "models").iterdir() if p.is_dir()]
    assert len(converted) == 1 and "whole" in converted[0]  # nothing of the damaged file kept to pass for whole


def test_a_conversion_cached_before_conversions_were_checked_is_not_measured(tiny_llama, tmp_path, isolated_cache):
    """An older edge-audit converted a GGUF lacking a tensor and cached the values transformers made
    up for it: the cache holds every tensor, so only converting the GGUF again tells."""
    lacking = tiny_gguf(tiny_llama, tmp_path / "lacking.gguf", drop=("blk.0.ffn_gate.weight",))
    target = cache_entry_for_gguf(lacking, None)
    shutil.copytree(tiny_llama, target)  # a whole model: the made-up tensor looks like any other
    write_meta(target, {"cache_format": 1, "source": {"kind": "gguf", "file": lacking.name, "bytes": lacking.stat().st_size}})
    refused(lacking, f"cannot convert {lacking}: its weights lack a tensor a LlamaForCausalLM needs, which would hold made-up values: {GATE}$")


def test_a_cached_conversion_lacking_a_tensor_is_converted_again(tiny_llama, tmp_path, isolated_cache):
    """The cached folder, changed since it was converted, no longer fills the model: the GGUF is
    converted again and the model loads whole, instead of refusing a folder the user never made."""
    whole = tiny_gguf(tiny_llama, tmp_path / "whole.gguf")
    target = drive(prepare_gguf(whole))
    edit_weights(target, lambda tensors: tensors.pop(GATE))
    assert load(whole).facts().parameters > 0
    assert GATE in load_file(target / "model.safetensors")


def test_the_config_a_model_would_load_with_is_read_without_loading_it(tiny_llama, tmp_path, isolated_cache, monkeypatch):
    """`known_config`: a GGUF file's from its metadata until it is converted, then the converted
    folder's, and again the file's once replaced; a folder's own; a hub model's downloaded copy;
    nothing for a hub model not downloaded, a GGUF file that is not one, or an unknown name."""
    import os

    import huggingface_hub.constants

    from audit.models.loader import known_config

    config = json.loads((tiny_llama / "config.json").read_text())
    path = tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    # What the tiny GGUF's metadata holds (tiny_gguf writes the folder's sizes), as transformers names it.
    written = {"max_position_embeddings": 256, "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
    before = known_config(str(path))
    assert {key: before[key] for key in written} == written
    assert before["rms_norm_eps"] == pytest.approx(config["rms_norm_eps"])
    assert not isolated_cache.exists()  # nothing converted to read it
    load(path)
    converted = json.loads((cache_entry_for_gguf(path, None) / "config.json").read_text())
    assert known_config(str(path)) == converted != before
    stamp = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(stamp, stamp))  # replaced: its conversion is no longer current
    assert known_config(str(path)) == before
    assert known_config(str(tiny_llama)) == config
    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    assert known_config("someone/tiny") == {}
    snapshot = hub / "models--someone--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (hub / "models--someone--tiny" / "refs").mkdir()
    (hub / "models--someone--tiny" / "refs" / "main").write_text("0" * 40)
    shutil.copy(tiny_llama / "config.json", snapshot / "config.json")
    assert known_config("someone/tiny") == config
    (tmp_path / "not.gguf").write_text("not a GGUF file")
    assert known_config(str(tmp_path / "not.gguf")) == {}
    assert known_config("no-such-model") == {} and known_config(str(tmp_path / "missing")) == {}
    assert known_config("~no-such-user-here/model") == {}


def test_a_gguf_file_replaced_by_one_of_the_same_size_is_converted_again(tiny_llama, tmp_path, isolated_cache):
    """A GGUF file replaced under the same name by one of the same size (other weights quantized
    the same way) is converted again: the model measured is the file's, not the conversion
    cached from the file it replaced."""
    import os

    from tests.audited import change_one_weight

    (tmp_path / "file").mkdir()
    path = tiny_gguf(tiny_llama, tmp_path / "file" / "tiny.gguf")
    first = load(path).model.state_dict()
    name = change_one_weight(tiny_llama, tmp_path / "changed")
    size, stamp = path.stat().st_size, path.stat().st_mtime_ns
    tiny_gguf(tmp_path / "changed", tmp_path / "other.gguf").replace(path)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # a second later, whatever the clock's grain
    assert path.stat().st_size == size
    again = load(path).model.state_dict()
    assert not (again[name] == first[name]).all()
    assert load_file(cache_entry_for_gguf(path, None) / "model.safetensors")[name].equal(again[name])


# -- a pruned variant's compressed sparse copy ------------------------------------------------------------
@pytest.fixture(scope="module")
def sparse_folder(tiny_llama, tmp_path_factory):
    """The tiny llama, pruned to half, stored in the compressed sparse format alone."""
    from audit.compress.methods import PruneSpec
    from audit.compress.output import save_model_folder
    from audit.compress.prune import prune_layers

    lm = load(tiny_llama)
    drive(prune_layers(lm.model, "magnitude", PruneSpec(0.5)))
    folder = tmp_path_factory.mktemp("sparse") / "sp"
    meta = {"text_prefix_token": "<|endoftext|>", "storage": {"format": SPARSE_FORMAT, "file": SPARSE_FILE, "loaded_bytes": 400_000}}
    items = dense_state(lm.model)
    save_model_folder(lm, folder, meta, lambda target: save_sparse(items, target / SPARSE_FILE))
    return folder


@pytest.fixture()
def sparse(sparse_folder, tmp_path):
    return shutil.copytree(sparse_folder, tmp_path / "sp")


def split(path):
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def rewrite_layout(path, edit):
    """Rewrite the edge-audit metadata of a sparse file as `edit` returns it, tensors untouched."""
    header, body = split(path)
    layout = json.loads(header["__metadata__"][WEIGHTS_META_KEY])
    header["__metadata__"][WEIGHTS_META_KEY] = json.dumps(edit(layout))
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + body)


def test_a_whole_sparse_folder_loads(sparse):
    assert load(sparse).facts().weight_sparsity == pytest.approx(0.5, abs=1e-3)


def test_a_sparse_folder_lacking_a_tensor_is_refused(sparse):
    state = load_sparse(sparse / SPARSE_FILE)
    del state["model.norm.weight"]
    save_sparse(list(state.items()), sparse / SPARSE_FILE)
    refused(sparse, f"cannot load the model in {sparse}: its weights in {SPARSE_FILE} lack a tensor a LlamaForCausalLM needs, which would hold made-up values: model.norm.weight$")


def _first(layout):
    return next(iter(layout["packed"]))


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda m: {**m, "packed": list(m["packed"])}, "lists the packed tensors as list, not as a JSON object"),
        (lambda m: {**m, "packed": None}, "lists the packed tensors as NoneType, not as a JSON object"),
        (lambda m: [m], "its edge_audit metadata is not a JSON object"),
        (lambda m: {**m, "version": "1"}, r"unsupported sparse format 'sparse-bitmask' v'1'"),
        (lambda m: {**m, "packed": {**m["packed"], _first(m): "x"}}, "no valid shape and float dtype"),
        (lambda m: {**m, "packed": {**m["packed"], _first(m): {**m["packed"][_first(m)], "shape": ["64", 64]}}}, "no valid shape and float dtype"),
        (lambda m: {**m, "packed": {**m["packed"], _first(m): {**m["packed"][_first(m)], "dtype": "nn"}}}, "no valid shape and float dtype"),
        (lambda m: {**m, "packed": {**m["packed"], _first(m): {**m["packed"][_first(m)], "shape": [7, 3]}}}, "do not fit its shape \\[7, 3\\]"),
        (lambda m: {**m, "packed": {**m["packed"], "model.extra.weight": {"shape": [2, 2], "dtype": "float32"}}}, "lists model.extra.weight, whose bitmask or values the file does not hold"),
    ],
)
def test_sparse_metadata_of_the_wrong_shape_is_refused_naming_the_file(sparse, edit, pattern):
    path = sparse / SPARSE_FILE
    rewrite_layout(path, edit)
    with pytest.raises(UserError, match=pattern) as caught:
        load_sparse(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert str(path) in refused(sparse, pattern)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda m: {**m, "packed": {**m["packed"], _first(m): "x"}}, "no valid shape and float dtype"),
        (lambda m: {**m, "packed": {**m["packed"], _first(m): {**m["packed"][_first(m)], "shape": ["a", 64]}}}, "no valid shape and float dtype"),
        (lambda m: {**m, "packed": {**m["packed"], "model.extra.weight": {"shape": [2, 2], "dtype": "float32"}}}, "lists model.extra.weight, whose bitmask or values the file does not hold"),
    ],
)
def test_fingerprinting_a_sparse_file_with_damaged_metadata_is_one_line(sparse, edit, pattern):
    from audit.fingerprint import fingerprint_folder

    rewrite_layout(sparse / SPARSE_FILE, edit)
    with pytest.raises(UserError, match=f"is damaged: its {WEIGHTS_META_KEY} metadata .*{pattern}") as caught:
        drive(fingerprint_folder(sparse))
    assert str(sparse / SPARSE_FILE) in str(caught.value) and "\n" not in str(caught.value)


# -- int8 variants -------------------------------------------------------------------------------------
def test_an_int8_variant_lacking_a_tensor_is_refused(tiny_llama, tmp_path):
    """The int8 loader builds the model empty and assigns what the file holds: a tensor it lacks
    stays without values, and is refused."""
    from audit.compress.quantize import INT8_FILE, quantize

    text = tmp_path / "t.txt"
    text.write_text(SHORT_TEXT)
    drive(quantize(str(tiny_llama), "int8-dynamic", tmp_path / "q", text=text, chunk_tokens=64, measure_perplexity=False))
    variant = next(p.parent for p in (tmp_path / "q").rglob(INT8_FILE))
    header, _ = split(variant / INT8_FILE)
    assert "model.norm.weight" in header
    tensors = {name: tensor.clone() for name, tensor in load_file(variant / INT8_FILE).items()}
    del tensors["model.norm.weight"]
    save_file(tensors, variant / INT8_FILE, metadata=header["__metadata__"])
    refused(variant, r"is incomplete: no values for model.norm.weight$")
