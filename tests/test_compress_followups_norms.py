"""Dense input norms kept for the sparsities of a sweep are used only when they are norms of
the layers pruned: a damaged or mismatched file is gathered again, never a shape error or a
mask made from wrong norms."""

import json

import pytest
import torch
from safetensors.torch import save

from audit.compress.layers import iter_layers, prunable_layers
from audit.compress.methods import LayerStats
from audit.compress.prune import prune, read_statistics, write_statistics
from audit.compress.recipe import PruneRecipe
from audit.models import load_model
from audit.plans import CalibrationSpec
from audit.progress import drive

EXCLUDE = ("*.o_proj", "*.down_proj")
DENSE = CalibrationSpec(nsamples=4, seqlen=32, statistics="dense")


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
    recipe = PruneRecipe("wanda", 0.5, exclude=EXCLUDE)

    def run(folder, cache):
        return drive(prune(str(tiny_llama), recipe, tmp_path / folder, calibration=DENSE, measure_perplexity=False, shared_statistics=cache))

    run("first", shared)
    kept = next(shared.glob("*.safetensors"))
    from safetensors.torch import load_file

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
    a = load_file(next((tmp_path / "again").glob("*.safetensors")))
    b = load_file(next((tmp_path / "alone").glob("*.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The damaged file was replaced by norms gathered again, which serve the next sparsity.
    assert run("third", shared)["recipe"]["statistics_shared"] is True
