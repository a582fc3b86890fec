"""Pruning works on every supported architecture through the generic block walk, with no per-model code."""

import copy

import pytest
import torch

from audit.compress.layers import BlockInputs, capture_block_inputs, find_decoder_blocks, prunable_layers, run_block
from audit.compress.methods import Pattern, PruneSpec
from audit.compress.prune import prune_layers
from audit.models import load_model
from audit.progress import drive
from tests.tiny import ARCHITECTURES

BLOCK_LISTS = {
    "llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers", "gemma": "model.layers",
    "phi3": "model.layers", "gpt2": "transformer.h", "opt": "model.decoder.layers",
}
LINEARS_PER_BLOCK = {"llama": 7, "mistral": 7, "qwen2": 7, "gemma": 7, "phi3": 4, "gpt2": 4, "opt": 6}


@pytest.fixture(scope="module")
def models(tiny_model_factory):
    loaded = {}

    def get(arch):
        if arch not in loaded:
            loaded[arch] = drive(load_model(str(tiny_model_factory(arch))))
        return loaded[arch]

    return get


def samples():
    return torch.randint(3, 300, (3, 20), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_blocks_are_found_and_replaying_them_reproduces_the_model(models, arch):
    """The captured block arguments (masks, positions, rotary embeddings) are the model's own:
    running the blocks one after another gives exactly the model's hidden states."""
    model = models(arch).model
    name, blocks = find_decoder_blocks(model)
    assert name == BLOCK_LISTS[arch] and len(blocks) == 2
    layers = prunable_layers(model)
    assert [len(group) for group in layers] == [LINEARS_PER_BLOCK[arch]] * 2
    ids = samples()
    inputs = capture_block_inputs(model, blocks[0], ids)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    outputs = [run_block(blocks[0], inputs, i) for i in range(len(ids))]
    for i in range(len(ids)):
        assert torch.equal(inputs.hidden[i][0], hidden[0][i])
        assert torch.equal(outputs[i][0], hidden[1][i])
    second = BlockInputs(torch.stack(outputs), inputs.args, inputs.kwargs)
    assert run_block(blocks[1], second, 0).shape == outputs[0].shape


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_every_architecture(models, arch, method):
    lm = models(arch)
    model = copy.deepcopy(lm.model)
    head = model.get_output_embeddings().weight.detach().clone()
    embeddings = model.get_input_embeddings().weight.detach().clone()
    outcome = drive(prune_layers(model, method, PruneSpec(0.5, scope="row" if method == "wanda" else "matrix"), samples()))
    assert outcome.layers == 2 * LINEARS_PER_BLOCK[arch]
    assert all(abs(s - 0.5) < 0.01 for s in outcome.per_layer.values()), outcome.per_layer
    assert outcome.actual_sparsity == pytest.approx(0.5, abs=0.005)
    assert torch.equal(model.get_output_embeddings().weight, head)
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    with torch.no_grad():
        logits = model(input_ids=samples()[:1]).logits
    assert torch.isfinite(logits).all()


def test_gpt2_conv1d_groups_run_along_the_inputs(models):
    """GPT-2 stores Conv1D weights as (in, out): N:M groups must run down its columns."""
    model = copy.deepcopy(models("gpt2").model)
    drive(prune_layers(model, "wanda", PruneSpec(0.5, Pattern(2, 4), scope="row"), samples()))
    weight = model.transformer.h[0].mlp.c_fc.weight.detach()  # (in=64, out=256)
    assert weight.shape == (64, 256)
    by_input = (weight.t().reshape(256, 16, 4) == 0).sum(-1)
    assert (by_input == 2).all()
    by_output = (weight.reshape(64, 64, 4) == 0).sum(-1)
    assert not (by_output == 2).all()


def test_exclude_patterns_keep_layers(models):
    model = copy.deepcopy(models("llama").model)
    original = model.model.layers[0].self_attn.o_proj.weight.detach().clone()
    outcome = drive(prune_layers(model, "magnitude", PruneSpec(0.5), exclude=("*.o_proj", "*.1.mlp.*")))
    assert torch.equal(model.model.layers[0].self_attn.o_proj.weight, original)
    assert outcome.layers == 14 - 2 - 3
    assert not any(name.endswith("o_proj") for name in outcome.per_layer)
