"""Pruning maths against straightforward reference computations, on single layers and on a tiny model."""

import copy

import numpy as np
import pytest
import torch

from audit.compress.layers import InputStatistics, capture_block_inputs, find_decoder_blocks, prunable_layers, run_block
from audit.compress.methods import PRUNING_METHODS, LayerStats, Pattern, PruneSpec
from audit.compress.recipe import PRUNING_METHOD_NAMES, QUANTIZATION_SCHEME_NAMES, check_scope
from audit.compress.prune import check_recipe, layer_spec, prune_layers
from audit.compress.recipe import PruneRecipe
from audit.errors import UserError
from audit.models import load_model
from audit.plans import CalibrationSpec
from audit.progress import drive


def random_weight(rows=24, cols=32, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def correlated_inputs(tokens=400, features=32, seed=1):
    """Inputs whose features are correlated and unevenly scaled, as real activations are."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g) * torch.linspace(0.1, 3.0, features)[None, :]
    return torch.randn(tokens, features, generator=g) @ mixing


def stats_of(x):
    x = x.double()
    return LayerStats(x.shape[0], (x**2).sum(0), (x.t() @ x).float())


def reference_lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k lowest entries of a 1-D array (ties to the lower index)."""
    mask = np.zeros(scores.shape, dtype=bool)
    mask[np.argsort(scores, kind="stable")[:k]] = True
    return mask


# -- magnitude ------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.9])
def test_magnitude_matrix_scope_equals_reference(sparsity):
    w = random_weight()
    pruned = PRUNING_METHODS.get("magnitude")(w, None, PruneSpec(sparsity, scope="matrix"))
    k = round(sparsity * w.numel())
    want = reference_lowest(np.abs(w.numpy()).ravel(), k).reshape(w.shape)
    assert np.array_equal(pruned.numpy() == 0, want)
    assert torch.equal(pruned[~torch.from_numpy(want)], w[~torch.from_numpy(want)])  # survivors untouched


def test_magnitude_row_scope_equals_reference():
    w = random_weight()
    pruned = PRUNING_METHODS.get("magnitude")(w, None, PruneSpec(0.5, scope="row"))
    for row in range(w.shape[0]):
        want = reference_lowest(np.abs(w[row].numpy()), 16)
        assert np.array_equal(pruned[row].numpy() == 0, want)


def test_magnitude_writes_positive_zeros():
    pruned = PRUNING_METHODS.get("magnitude")(-random_weight().abs(), None, PruneSpec(0.5))
    zeros = pruned[pruned == 0]
    assert not torch.signbit(zeros).any()


# -- wanda ----------------------------------------------------------------------------------
def test_wanda_equals_reference_on_one_layer():
    w, x = random_weight(), correlated_inputs()
    pruned = PRUNING_METHODS.get("wanda")(w, stats_of(x), PruneSpec(0.5, scope="row"))
    norms = np.linalg.norm(x.numpy().astype(np.float64), axis=0)
    for row in range(w.shape[0]):
        score = np.abs(w[row].numpy().astype(np.float64)) * norms
        assert np.array_equal(pruned[row].numpy() == 0, reference_lowest(score, 16))
    # The input norms matter: wanda is not magnitude per row on these inputs.
    magnitude = PRUNING_METHODS.get("magnitude")(w, None, PruneSpec(0.5, scope="row"))
    assert not torch.equal(pruned == 0, magnitude == 0)


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return drive(load_model(str(tiny_llama)))


def calibration_ids(n=4, length=24, seed=0):
    return torch.randint(3, 300, (n, length), generator=torch.Generator().manual_seed(seed))


def reference_wanda(model, samples, sparsity):
    """Wanda as the paper states it, written plainly: for each block in order, run the whole
    (partly pruned) model on the samples, record each linear layer's inputs, and zero in each
    row the weights with the lowest |W_ij| * ||X_j||_2."""
    _, blocks = find_decoder_blocks(model)
    masks = {}
    for index, block in enumerate(blocks):
        linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
        inputs = {n: [] for n in linears}
        hooks = [m.register_forward_hook(lambda mod, a, o, n=n: inputs[n].append(a[0].reshape(-1, a[0].shape[-1]).double())) for n, m in linears.items()]
        with torch.no_grad():
            for row in samples:
                model(input_ids=row[None, :], use_cache=False)
        for h in hooks:
            h.remove()
        for name, module in linears.items():
            x = torch.cat(inputs[name]).numpy()
            norms = np.sqrt((x**2).sum(0))
            w = module.weight.detach().double().numpy()
            k = round(sparsity * w.shape[1])
            mask = np.stack([reference_lowest(np.abs(w[r]) * norms, k) for r in range(w.shape[0])])
            with torch.no_grad():
                module.weight[torch.from_numpy(mask)] = 0.0
            masks[f"blocks.{index}.{name}"] = mask
    return masks


def test_wanda_masks_on_a_tiny_model_equal_the_reference(tiny):
    samples = calibration_ids()
    ours = copy.deepcopy(tiny.model)
    drive(prune_layers(ours, "wanda", PruneSpec(0.5, scope="row"), samples))
    theirs = copy.deepcopy(tiny.model)
    masks = reference_wanda(theirs, samples, 0.5)
    _, blocks = find_decoder_blocks(ours)
    compared = 0
    for index, block in enumerate(blocks):
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                assert np.array_equal(module.weight.detach().numpy() == 0, masks[f"blocks.{index}.{name}"]), name
                compared += 1
    assert compared == 14


def test_magnitude_masks_on_a_tiny_model_equal_the_reference(tiny):
    model = copy.deepcopy(tiny.model)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    drive(prune_layers(model, "magnitude", PruneSpec(0.5, scope="matrix")))
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if module is head:
            assert torch.equal(module.weight, original[name])  # the output head is kept
            continue
        w = original[name].numpy()
        want = reference_lowest(np.abs(w).ravel(), round(0.5 * w.size)).reshape(w.shape)
        assert np.array_equal(module.weight.detach().numpy() == 0, want), name
    assert torch.equal(model.get_input_embeddings().weight, tiny.model.get_input_embeddings().weight)


# -- sparsegpt ------------------------------------------------------------------------------
def reconstruction_error(w, pruned, x):
    return float(torch.linalg.norm(x.double() @ (w.double() - pruned.double()).t()))


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)])
def test_sparsegpt_reconstructs_better_than_magnitude_on_one_layer(pattern):
    w, x = random_weight(), correlated_inputs()
    spec = PruneSpec(0.5, pattern)
    sgpt = PRUNING_METHODS.get("sparsegpt")(w, stats_of(x), spec)
    magnitude = PRUNING_METHODS.get("magnitude")(w, None, spec)
    assert (sgpt == 0).float().mean() == pytest.approx(0.5, abs=1e-9)
    assert reconstruction_error(w, sgpt, x) < reconstruction_error(w, magnitude, x)


def test_sparsegpt_reconstructs_better_than_magnitude_on_a_tiny_model(tiny):
    """||WX - W'X|| on the real inputs of every linear layer of the first block."""
    model = tiny.model
    samples = calibration_ids(n=8, length=48)
    _, blocks = find_decoder_blocks(model)
    inputs = capture_block_inputs(model, blocks[0], samples)
    layers = prunable_layers(model)[0]
    captured = {layer.name: [] for layer in layers}
    hooks = [layer.module.register_forward_hook(lambda m, a, o, n=layer.name: captured[n].append(a[0].reshape(-1, a[0].shape[-1]))) for layer in layers]
    with InputStatistics(layers, "hessian") as statistics:
        for index in range(len(samples)):
            statistics.new_forward()
            run_block(blocks[0], inputs, index)
    for h in hooks:
        h.remove()
    spec = PruneSpec(0.5)
    for layer in layers:
        w, x = layer.read(), torch.cat(captured[layer.name])
        sgpt = PRUNING_METHODS.get("sparsegpt")(w, statistics.stats(layer), spec)
        magnitude = PRUNING_METHODS.get("magnitude")(w, None, spec)
        assert (sgpt == 0).float().mean() == pytest.approx(0.5, abs=0.01)
        assert reconstruction_error(w, sgpt, x) < reconstruction_error(w, magnitude, x), layer.name


def test_sparsegpt_at_zero_sparsity_changes_nothing():
    w, x = random_weight(), correlated_inputs()
    out = PRUNING_METHODS.get("sparsegpt")(w, stats_of(x), PruneSpec(0.0))
    assert torch.allclose(out, w, atol=1e-5)


def test_shared_statistics_hold_every_layers_inputs(tiny):
    """q, k and v read the same tensor; their shared accumulator must equal each one's own sums."""
    model = tiny.model
    samples = calibration_ids()
    _, blocks = find_decoder_blocks(model)
    inputs = capture_block_inputs(model, blocks[0], samples)
    layers = prunable_layers(model)[0]
    captured = {layer.name: [] for layer in layers}
    hooks = [layer.module.register_forward_hook(lambda m, a, o, n=layer.name: captured[n].append(a[0].reshape(-1, a[0].shape[-1]).double())) for layer in layers]
    with InputStatistics(layers, "hessian") as statistics:
        for index in range(len(samples)):
            statistics.new_forward()
            run_block(blocks[0], inputs, index)
    for h in hooks:
        h.remove()
    for layer in layers:
        x = torch.cat(captured[layer.name])
        stats = statistics.stats(layer)
        assert stats.n_tokens == x.shape[0] == 4 * 24
        assert torch.allclose(stats.sq_norms, (x**2).sum(0), rtol=1e-9)
        assert torch.allclose(stats.hessian.double(), x.t() @ x, rtol=1e-4, atol=1e-3)
    assert any(len(group) == 3 for group in statistics.layers_sharing_inputs())


# -- random ---------------------------------------------------------------------------------
def test_random_is_seeded_and_exact():
    w = random_weight()
    fn = PRUNING_METHODS.get("random")
    a, b, c = fn(w, None, PruneSpec(0.5, seed=1)), fn(w, None, PruneSpec(0.5, seed=1)), fn(w, None, PruneSpec(0.5, seed=2))
    assert torch.equal(a, b) and not torch.equal(a == 0, c == 0)
    assert int((a == 0).sum()) == w.numel() // 2
    # Not a magnitude rule in disguise: about half the pruned weights are above the median |W|.
    above = (w.abs() > w.abs().median())[a == 0].float().mean()
    assert 0.3 < float(above) < 0.7


# -- N:M ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "random"])
@pytest.mark.parametrize("text", ["2:4", "4:8", "1:4"])
def test_every_group_of_every_pruned_row_has_exactly_m_minus_n_zeros(tiny, method, text):
    recipe = PruneRecipe(method, pattern=text)
    pattern = recipe.parsed_pattern
    model = copy.deepcopy(tiny.model)
    outcome = drive(prune_layers(model, method, layer_spec(recipe), calibration_ids()))
    checked = zeros = 0
    for group in prunable_layers(model):
        for layer in group:
            w = layer.read()  # (out, in): groups run along the inputs of each output row
            rows, cols = w.shape
            zeros_per_group = (w.reshape(rows, cols // pattern.group, pattern.group) == 0).sum(-1)
            assert (zeros_per_group == pattern.group - pattern.kept).all(), layer.name
            checked += zeros_per_group.numel()
            zeros += int((w == 0).sum())
    assert checked == 73728 // pattern.group  # all 73,728 weights of the 14 layers, in groups
    # N:M counts the weights kept: the recipe's sparsity is the share removed, as measured.
    assert recipe.sparsity == (pattern.group - pattern.kept) / pattern.group == pytest.approx(zeros / 73728)
    assert outcome.actual_sparsity == pytest.approx(recipe.sparsity)


# -- inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["2-4", "4:2", "0:4", "2:2", "a:b", "2:4:8", "1:1000", "1:32", "\u0662:\u0664"])
def test_malformed_patterns_are_user_errors(text):
    with pytest.raises(UserError, match="pattern"):
        Pattern.parse(text)


def test_patterns_parse():
    assert Pattern.parse("2:4") == Pattern(2, 4) and Pattern.parse(" 4 : 8 ").sparsity == 0.5
    assert Pattern.parse("1:4") == Pattern(kept=1, group=4) and Pattern.parse("1:4").sparsity == 0.75
    assert Pattern.parse("unstructured") == Pattern() == Pattern.parse(None)
    assert str(Pattern(2, 4)) == "2:4" and str(Pattern()) == "unstructured"


@pytest.mark.parametrize("sparsity", [-0.1, 0.951, 1.0, float("nan")])
def test_sparsity_outside_range_is_a_user_error(sparsity):
    with pytest.raises(UserError, match="sparsity must be between 0 and 0.95"):
        PruneRecipe("magnitude", sparsity)


def test_recipe_resolution():
    assert PruneRecipe("wanda").sparsity == layer_spec(PruneRecipe("wanda")).sparsity == 0.5
    assert layer_spec(PruneRecipe("magnitude", 0.95)).sparsity == 0.95
    assert layer_spec(PruneRecipe("wanda", pattern="2:4")).pattern == Pattern(2, 4)
    assert PruneRecipe("wanda", pattern="1:4").sparsity == layer_spec(PruneRecipe("wanda", pattern="1:4")).sparsity == 0.75
    assert PruneRecipe("wanda", 0.75, " 1 : 4 ").pattern == "1:4"
    assert layer_spec(PruneRecipe("magnitude")).scope == "matrix"
    assert layer_spec(PruneRecipe("magnitude", per_row=True)).scope == "row"
    assert layer_spec(PruneRecipe("wanda")).scope == "row"
    assert layer_spec(PruneRecipe("random"), seed=7).seed == 7
    assert check_recipe(PruneRecipe("random"), CalibrationSpec(seed=3)).seed == 3
    with pytest.raises(UserError, match="pattern 2:4 means sparsity 0.5"):
        PruneRecipe("wanda", 0.7, "2:4")
    with pytest.raises(UserError, match="unknown pruning method 'obs'; known: magnitude, random, sparsegpt, wanda"):
        layer_spec(PruneRecipe("obs"))
    with pytest.raises(UserError, match="--scope applies to magnitude, random, wanda"):
        layer_spec(PruneRecipe("sparsegpt", per_row=True))
    with pytest.raises(UserError, match="wanda supports scope row"):
        check_scope("wanda", "matrix")
    with pytest.raises(UserError, match="calibration samples must be at least 1"):
        check_recipe(PruneRecipe("wanda"), CalibrationSpec(nsamples=0))
    check_recipe(PruneRecipe("magnitude"), CalibrationSpec(nsamples=0))  # no calibration needed


def test_registry_metadata():
    assert PRUNING_METHODS.names() == ["magnitude", "random", "wanda", "sparsegpt"]
    assert PRUNING_METHODS.meta("wanda")["needs"] == "norms"
    assert PRUNING_METHODS.meta("sparsegpt")["needs"] == "hessian" and PRUNING_METHODS.meta("sparsegpt")["updates_weights"]
    assert PRUNING_METHODS.meta("magnitude")["needs"] is None


def test_the_code_is_registered_under_the_names_and_facts_known_without_torch():
    from audit.compress.quantize import QUANTIZATION_SCHEMES

    for code, known in ((PRUNING_METHODS, PRUNING_METHOD_NAMES), (QUANTIZATION_SCHEMES, QUANTIZATION_SCHEME_NAMES)):
        assert code.names() == known.names()
        assert all(code.meta(name) == known.meta(name) for name in known.names())
