"""Dense input norms kept for the sparsities of a sweep serve a later sparsity only when they are
the pruned layers' own and were gathered from what it would gather them from: a damaged or
mismatched file (a layer missing or not pruned, a wrong shape or dtype, a sum that is not a
finite, non-negative number, a token count that is not a positive whole number), other
calibration text under the same file name, another dtype or other weights in the same model
folder give norms gathered again, and the masks that norms gathered alone would give."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save

from audit.compress.layers import iter_layers, prunable_layers
from audit.compress.methods import LayerStats
from audit.compress.prune import prune, read_statistics, write_statistics
from audit.compress.recipe import PruneRecipe
from audit.models import load_model
from audit.models.loader import LoadOptions
from audit.plans import CalibrationSpec
from audit.progress import drive
from tests.tiny import CORPUS, make_tiny_model

EXCLUDE = ("*.o_proj", "*.down_proj")
DENSE = CalibrationSpec(nsamples=4, seqlen=32, statistics="dense")


def prune_wanda(model, sparsity, out, calibration, shared, options=LoadOptions()):
    """Wanda at `sparsity`, its input norms kept in (or read from) `shared`."""
    recipe = PruneRecipe("wanda", sparsity, exclude=EXCLUDE)
    return drive(prune(str(model), recipe, out, calibration=calibration, options=options, measure_perplexity=False, shared_statistics=shared))


def weights(folder):
    return load_file(next(folder.glob("*.safetensors")))


def same_weights(a, b):
    a, b = weights(a), weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def layers(tiny_llama):
    return list(iter_layers(prunable_layers(drive(load_model(str(tiny_llama))).model, EXCLUDE)))


def good_norms(layers):
    g = torch.Generator().manual_seed(0)
    return {layer.name: LayerStats(128, torch.rand(layer.shape[1], generator=g, dtype=torch.float64)) for layer in layers}


def write_raw(path, tensors, tokens):
    path.write_bytes(save(tensors, metadata={"n_tokens": json.dumps(tokens)}))


def test_norms_of_the_layers_pruned_are_read_back(layers, tmp_path):
    path = tmp_path / "norms.safetensors"
    norms = good_norms(layers)
    write_statistics(path, norms)
    known = read_statistics(path, layers)
    assert known is not None and set(known) == set(norms)
    assert all(known[n].n_tokens == 128 and torch.equal(known[n].sq_norms, norms[n].sq_norms) for n in norms)


def damaged(layers, how):
    norms = good_norms(layers)
    tensors = {name: s.sq_norms.clone() for name, s in norms.items()}
    tokens = {name: s.n_tokens for name, s in norms.items()}
    first = layers[0].name
    if how == "a layer missing":
        del tensors[first], tokens[first]
    elif how == "a layer not pruned":
        tensors["model.layers.0.self_attn.o_proj"] = torch.ones(64, dtype=torch.float64)
        tokens["model.layers.0.self_attn.o_proj"] = 128
    elif how == "one input short":
        tensors[first] = tensors[first][:-1].clone()
    elif how == "two dimensions":
        tensors[first] = tensors[first][None, :].clone()
    elif how == "float32":
        tensors[first] = tensors[first].float()
    elif how == "NaN":
        tensors[first][3] = float("nan")
    elif how == "infinite":
        tensors[first][3] = float("inf")
    elif how == "negative":
        tensors[first][3] = -1.0
    elif how.startswith("tokens "):
        tokens[first] = json.loads(how.removeprefix("tokens "))
    else:
        raise AssertionError(how)
    return tensors, tokens


DAMAGES = [
    "a layer missing", "a layer not pruned", "one input short", "two dimensions", "float32", "NaN", "infinite",
    "negative", "tokens 0", "tokens -5", "tokens 2.5", "tokens \"128\"", "tokens true", "tokens null",
]


@pytest.mark.parametrize("how", DAMAGES)
def test_norms_that_are_not_those_of_the_layers_pruned_are_unreadable(layers, tmp_path, how):
    path = tmp_path / "norms.safetensors"
    write_raw(path, *damaged(layers, how))
    assert read_statistics(path, layers) is None


def test_unreadable_files_are_unreadable(layers, tmp_path):
    path = tmp_path / "norms.safetensors"
    assert read_statistics(path, layers) is None  # none kept yet
    for data in (b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", b"not a tensor file"):
        path.write_bytes(data)
        assert read_statistics(path, layers) is None
    tensors, tokens = damaged(layers, "tokens 0")
    path.write_bytes(save(tensors, metadata={"n_tokens": "[" * 100000}))  # nested too deep for json
    assert read_statistics(path, layers) is None


@pytest.mark.parametrize("how", ["one input short", "negative"])
def test_a_sweep_gathers_damaged_norms_again_and_prunes_as_it_would_without_them(tiny_llama, tmp_path, how):
    shared = tmp_path / ".calibration"

    def run(folder, cache):
        return prune_wanda(tiny_llama, 0.5, tmp_path / folder, DENSE, cache)

    run("first", shared)
    kept = next(shared.glob("*.safetensors"))
    tensors = load_file(kept)
    name = sorted(tensors)[0]
    if how == "one input short":
        tensors[name] = tensors[name][:-1].clone()
    else:
        tensors[name] = -tensors[name]
    tokens = json.loads(json.loads(kept.read_bytes()[8 : 8 + int.from_bytes(kept.read_bytes()[:8], "little")])["__metadata__"]["n_tokens"])
    write_raw(kept, tensors, tokens)
    again = run("again", shared)
    assert again["recipe"]["statistics_shared"] is False
    run("alone", None)
    assert same_weights(tmp_path / "again", tmp_path / "alone")
    # The damaged file was replaced by norms gathered again, which serve the next sparsity.
    assert run("third", shared)["recipe"]["statistics_shared"] is True


def test_a_calibration_file_edited_under_the_same_name_gives_norms_gathered_again(tiny_llama, tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text("\n".join(CORPUS[:6]) * 4)
    calibration = CalibrationSpec(nsamples=4, seqlen=32, statistics="dense", file=str(text))
    shared = tmp_path / ".calibration"
    assert prune_wanda(tiny_llama, 0.3, tmp_path / "w30", calibration, shared)["recipe"]["statistics_shared"] is False
    assert prune_wanda(tiny_llama, 0.5, tmp_path / "w50", calibration, shared)["recipe"]["statistics_shared"] is True
    text.write_text("\n".join(reversed(CORPUS[:6])).upper() * 4)  # other text, the same name
    edited = prune_wanda(tiny_llama, 0.7, tmp_path / "w70", calibration, shared)
    assert edited["recipe"]["statistics_shared"] is False
    alone = prune_wanda(tiny_llama, 0.7, tmp_path / "w70-alone", calibration, None)
    assert same_weights(tmp_path / "w70", tmp_path / "w70-alone")
    assert alone["recipe"]["calibration"] == edited["recipe"]["calibration"]


def test_norms_gathered_in_another_dtype_are_gathered_again(tiny_llama, tmp_path):
    shared = tmp_path / ".calibration"
    prune_wanda(tiny_llama, 0.3, tmp_path / "w30", DENSE, shared)
    bf16 = LoadOptions(dtype="bfloat16")
    assert prune_wanda(tiny_llama, 0.7, tmp_path / "w70", DENSE, shared, bf16)["recipe"]["statistics_shared"] is False
    prune_wanda(tiny_llama, 0.7, tmp_path / "w70-alone", DENSE, None, bf16)
    assert same_weights(tmp_path / "w70", tmp_path / "w70-alone")


def test_weights_replaced_under_the_same_name_give_norms_gathered_again(tiny_llama, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    shared = tmp_path / ".calibration"
    prune_wanda(model, 0.3, tmp_path / "w30", DENSE, shared)
    make_tiny_model(model, seed=1)  # other weights in the same folder
    assert prune_wanda(model, 0.7, tmp_path / "w70", DENSE, shared)["recipe"]["statistics_shared"] is False
    prune_wanda(model, 0.7, tmp_path / "w70-alone", DENSE, None)
    assert same_weights(tmp_path / "w70", tmp_path / "w70-alone")
    assert prune_wanda(model, 0.5, tmp_path / "w50", DENSE, shared)["recipe"]["statistics_shared"] is True


def test_the_same_model_and_calibration_still_share_norms(tiny_llama, tmp_path):
    shared = tmp_path / ".calibration"
    prune_wanda(tiny_llama, 0.3, tmp_path / "w30", DENSE, shared)
    assert prune_wanda(tiny_llama, 0.7, tmp_path / "w70", DENSE, shared)["recipe"]["statistics_shared"] is True
