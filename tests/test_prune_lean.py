"""The lean calibration walk prunes exactly as the earlier one did: same masks, same weights, bit
for bit; and it lets go of each layer's statistics and of the activations it no longer needs."""

import copy
import gc
import hashlib
import weakref

import pytest
import torch

from audit.compress.layers import (
    InputStatistics,
    advance,
    capture_block_inputs,
    find_decoder_blocks,
    iter_layers,
    prunable_layers,
    run_block,
)
from audit.compress.methods import PRUNING_METHODS, LayerStats, PruneSpec, _inverse_hessian_factor
from audit.compress.prune import layer_spec, prune_layers
from audit.compress.recipe import PruneRecipe
from audit.models import load_model
from audit.progress import drive

# sha256 over every pruned layer's name and zero mask, and over its name and float32 weight
# bytes, in walk order, as the earlier walk (a list of cloned activations per block, every
# statistic of a block kept until the whole block was pruned) produced them on the tiny llama,
# 8 samples x 32 tokens, one thread. SparseGPT updates the weights it keeps with float sums
# whose rounding depends on the CPU's vector instructions, so its weights have one digest per
# kind of CPU the earlier walk was run on (the machine the walk was rewritten on, then an AMD
# EPYC with AVX2 alone, where the earlier and the lean walk give the same digests);
# magnitude and Wanda only zero weights, and every mask is the same on both.
REFERENCE = {
    ("magnitude", "unstructured", "sequential"): ("418c0a946e6b42fdc1e2ac52cf3f7bdc4caa199dd57859e6e14d1f3901e3c1be", ("706b3da07176ed956ec83ab631670adc1c8ed37f0f4ac820e8890770762f16f3",)),
    ("magnitude", "2:4", "sequential"): ("4854cf78fc3f789857ad9810c49a848246c0587d23794d8da3cd668e0508a216", ("ed0bd46b7c76c0808105cb298b5cea6ad8d10b87048ba4c73910072c69dcbb68",)),
    ("wanda", "unstructured", "sequential"): ("d45a97ac3f9bc78120c9bbe98311b40d6453be6eb55626b18f424b0b347b7fae", ("60308e0d33b2d54b4a0b81207846f3e1d8da50992673d16b7b6d9e919c05b527",)),
    ("wanda", "2:4", "sequential"): ("85a343c5a619dcbee82188ef5c4420a71f27000710d4b6a2c8ae1c32b232edf9", ("bf7ebeffd76bf1f931726ae3324d5eed87781c470cdce46c6d14a999fc36d5b4",)),
    ("wanda", "unstructured", "dense"): ("ff9e01d981869b55af16fff8251414a534efd2e8fbfba22dd507e8339ccb5889", ("47293d1cb7478f9752b1d594386114447329a5a608d94ea3c31fe2074abfb56b",)),
    ("sparsegpt", "unstructured", "sequential"): ("ccdbc6524a2ffdd1b437fa624ee860c93f3598328c1b4ec25c27cdc704c1a2d1", ("16aa0737b98f9b74d487d6348a434facb6489633117fcb6db5f6027fa5ba6726", "24aa81b2ff0b91ee14b4ff0f2908aa05d441c62041bbf680e1899f8f823295b9",)),
    ("sparsegpt", "2:4", "sequential"): ("8201cf95b1065b46b3f83bb875d3c9e61d52e591f8c9f12bd36dd39ef55c3d44", ("ad0f1b910d6e7efeacec85504ba61e2354ccf353ad5444a3d586be1f8edf73ea", "264202e37450a28327510219b56d4aecf7124550bf9e7902d3eaade4221a9e6d",)),
    ("sparsegpt", "unstructured", "dense"): ("2ae44aa01722afbd1bcdc88ce361f056703bef3450d40e15e5b2c958d516f02f", ("ec70e4be5db8d37f22d07b24bb523a4b6d5f814b0a30601ab7196ccbf8243fde", "cf3000c95f9624dbea539b481fe925ff5fd92388957c8b120bf22ce0987f250c",)),
}


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return drive(load_model(str(tiny_llama)))


@pytest.fixture()
def one_thread():
    """Float sums may be split differently across threads: the digests are of one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def samples():
    return torch.randint(3, 300, (8, 32), generator=torch.Generator().manual_seed(0))


def digests(model):
    masks, weights = hashlib.sha256(), hashlib.sha256()
    for layer in iter_layers(prunable_layers(model)):
        w = layer.read().contiguous()
        masks.update(layer.name.encode())
        masks.update((w == 0).numpy().tobytes())
        weights.update(layer.name.encode())
        weights.update(w.numpy().tobytes())
    return masks.hexdigest(), weights.hexdigest()


@pytest.mark.parametrize(("method", "pattern", "statistics"), sorted(REFERENCE))
def test_masks_and_weights_are_bit_identical_to_the_earlier_walk(tiny, one_thread, method, pattern, statistics):
    model = copy.deepcopy(tiny.model)
    drive(prune_layers(model, method, layer_spec(PruneRecipe(method, pattern=pattern)), samples(), statistics=statistics))
    mask_digest, weight_digest = digests(model)
    want_masks, want_weights = REFERENCE[(method, pattern, statistics)]
    assert mask_digest == want_masks
    assert weight_digest in want_weights


def test_the_digests_see_a_single_changed_weight(tiny, one_thread):
    """The digests are not blind: pruning one more weight changes both."""
    model = copy.deepcopy(tiny.model)
    drive(prune_layers(model, "wanda", layer_spec(PruneRecipe("wanda")), samples()))
    before = digests(model)
    layer = next(iter_layers(prunable_layers(model)))
    with torch.no_grad():
        kept = (layer.module.weight != 0).nonzero()[0]
        layer.module.weight[tuple(kept)] = 0.0
    after = digests(model)
    assert before[0] != after[0] and before[1] != after[1]


def test_block_inputs_are_one_tensor_that_outputs_overwrite(tiny):
    model = tiny.model
    _, blocks = find_decoder_blocks(model)
    ids = samples()[:3]
    inputs = capture_block_inputs(model, blocks[0], ids)
    assert isinstance(inputs.hidden, torch.Tensor) and inputs.hidden.shape == (3, 1, 32, 64)
    # Each row is what the model hands its first block for that sample alone.
    with torch.no_grad():
        for i in range(3):
            assert torch.equal(inputs.hidden[i], model.get_input_embeddings()(ids[i][None, :]))
    storage = inputs.hidden.untyped_storage().data_ptr()
    expected = run_block(blocks[0], inputs, 1).clone()
    advance(inputs, 1, run_block(blocks[0], inputs, 1))
    assert torch.equal(inputs.hidden[1], expected)
    assert inputs.hidden.untyped_storage().data_ptr() == storage  # written in place, not reallocated


def test_a_layers_statistics_go_when_the_last_layer_sharing_them_is_released(tiny):
    model = tiny.model
    _, blocks = find_decoder_blocks(model)
    inputs = capture_block_inputs(model, blocks[0], samples()[:2])
    layers = {layer.name.rsplit(".", 1)[-1]: layer for layer in prunable_layers(model)[0]}
    with InputStatistics(list(layers.values()), "hessian") as stats:
        for i in range(2):
            stats.new_forward()
            run_block(blocks[0], inputs, i)
            stats.new_forward()
    assert not stats._seen  # no layer input outlives its forward
    hessian = weakref.ref(stats.stats(layers["q_proj"]).hessian)
    down = weakref.ref(stats.stats(layers["down_proj"]).hessian)
    stats.release(layers["q_proj"])
    stats.release(layers["k_proj"])
    gc.collect()
    assert hessian() is not None  # v_proj still reads the same input
    stats.release(layers["v_proj"])
    gc.collect()
    assert hessian() is None and down() is not None
    stats.release(layers["down_proj"])
    gc.collect()
    assert down() is None


def _reference_inverse_hessian_factor(hessian, damp):
    """The factor as first written: a fresh damped copy for each try."""
    mean_diag = float(hessian.diagonal().mean())
    for factor in (1.0, 10.0, 100.0, 1000.0):
        damped = hessian.clone()
        damped.diagonal().add_(damp * factor * mean_diag)
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0:
                return upper
    raise AssertionError("not invertible")


@pytest.mark.parametrize("lowest", [0.5, -0.05, -0.5])  # no retry; one stronger damping; two
def test_the_factor_made_from_fresh_hessians_is_bit_identical_to_the_first_one(lowest):
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    eigen = torch.linspace(lowest, 2.0, 40, dtype=torch.float64)
    hessian = (q * eigen) @ q.t()
    hessian = (hessian + hessian.t()) / 2
    want = _reference_inverse_hessian_factor(hessian.clone(), 0.01)
    got, _ = _inverse_hessian_factor(hessian.clone, 0.01)
    assert torch.equal(got, want)


def test_sparsegpt_leaves_the_statistics_it_is_given_untouched():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    stats = LayerStats(200, (x.double() ** 2).sum(0), (x.t() @ x).double())  # float64: a copy must still be made
    kept = stats.hessian.clone()
    PRUNING_METHODS.get("sparsegpt")(torch.randn(8, 16, generator=g), stats, PruneSpec(0.5))
    assert torch.equal(stats.hessian, kept)
