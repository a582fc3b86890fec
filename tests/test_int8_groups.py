"""Int8 layers that read the same input, multiplied as one: which layers group, outputs bit for
bit those of each layer alone (decode steps and whole sequences), and the stacked product
handed out only for the input it was computed for."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from audit.compress import quantize as qz
from audit.compress import int8_products
from audit.compress.int8_products import (
    EXACT_INPUTS, SharedInput, SignSplit, group_shared_inputs, layer_products, level_products, per_token_layers,
)
from audit.compress.outliers import OutlierRule
from audit.compress.quantize import PER_TENSOR, QuantizeSettings, quantize, quantize_int8_dynamic
from audit.models import load_model
from audit.progress import drive

NO_RULE = QuantizeSettings(outliers=OutlierRule(ratio=None))


def _variant(source, folder, settings=NO_RULE):
    drive(quantize(str(source), "int8-dynamic", folder, settings=settings, measure_perplexity=False))
    return folder


def _ungrouped(folder, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(qz, "group_shared_inputs", lambda model: [])
        return drive(load_model(str(folder)))


def _groups(model):
    return sorted({m.shared_input for m in model.modules() if hasattr(m, "shared_input")})


def test_the_projections_that_read_one_input_are_grouped(tiny_model_factory, tmp_path):
    lm = drive(load_model(str(_variant(tiny_model_factory("llama"), tmp_path / "q"))))
    expected = []
    for i in range(2):
        expected.append(tuple(f"model.layers.{i}.self_attn.{p}_proj" for p in "qkv"))
        expected.append((f"model.layers.{i}.mlp.gate_proj", f"model.layers.{i}.mlp.up_proj"))
    assert _groups(lm.model) == sorted(expected)
    alone = [n for n, m in per_token_layers(lm.model).items() if not hasattr(m, "shared_input")]
    assert sorted(alone) == ["lm_head", "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.o_proj",
                             "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj"]


@pytest.mark.parametrize("arch", ["llama", "opt"])  # opt's projections have biases
def test_grouped_layers_give_the_same_logits_bit_for_bit(arch, tiny_model_factory, tmp_path, monkeypatch):
    folder = _variant(tiny_model_factory(arch), tmp_path / "q")
    grouped, plain = drive(load_model(str(folder))), _ungrouped(folder, monkeypatch)
    assert _groups(grouped.model) and not _groups(plain.model)
    ids = torch.tensor([[0, 5, 9, 17, 33, 60, 61, 7, 12]])
    with torch.inference_mode():
        assert torch.equal(grouped.model(input_ids=ids).logits, plain.model(input_ids=ids).logits)
        # Decode steps: one token at a time against the cache, where the single-token kernel runs.
        caches = [m.model(input_ids=ids[:, :4], use_cache=True).past_key_values for m in (grouped, plain)]
        for step in range(4, ids.shape[1]):
            outs = [m.model(input_ids=ids[:, step : step + 1], past_key_values=c, use_cache=True) for m, c in zip((grouped, plain), caches)]
            assert torch.equal(outs[0].logits, outs[1].logits)
    # A member's weights read (and save) as before, from its rows of the group's.
    plain_layers = per_token_layers(plain.model)
    for name, layer in per_token_layers(grouped.model).items():
        mine, theirs = layer.weight(), plain_layers[name].weight()
        assert torch.equal(mine.int_repr(), theirs.int_repr())
        assert torch.equal(mine.q_per_channel_scales(), theirs.q_per_channel_scales()) and mine.q_per_channel_scales().dtype == torch.float64
        assert (layer.bias() is None) == (plain_layers[name].bias() is None)
        assert layer.bias() is None or torch.equal(layer.bias(), plain_layers[name].bias())
    mine, theirs = grouped.model.state_dict(), plain.model.state_dict()
    assert mine.keys() == theirs.keys()
    prompt = [0, 5, 9, 17]
    assert grouped.generate(prompt, max_new_tokens=12, stop_at_eos=False).token_ids == plain.generate(prompt, max_new_tokens=12, stop_at_eos=False).token_ids


def test_a_float_member_leaves_its_siblings_ungrouped(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    quantize_int8_dynamic(model, keep_float=["model.layers.0.mlp.gate_proj"])
    formed = group_shared_inputs(model)
    assert ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj") not in formed
    assert ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj") in formed
    assert tuple(f"model.layers.0.self_attn.{p}_proj" for p in "qkv") in formed


def test_per_tensor_layers_are_not_grouped(tiny_llama, tmp_path):
    folder = _variant(tiny_llama, tmp_path / "q", QuantizeSettings(outliers=OutlierRule(ratio=None), activation_scales=PER_TENSOR))
    assert _groups(drive(load_model(str(folder))).model) == []


@pytest.fixture
def qkv(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    quantize_int8_dynamic(model)
    attention = model.model.layers[0].self_attn
    return [attention.q_proj, attention.k_proj, attention.v_proj]


def _own(layers):
    """Each layer's product with its own weights, computed before any grouping."""
    return [lambda x, layer=layer, w=(layer._int8_weight.clone(), layer._int8_weight_scale.clone(), layer._int8_single): _alone(layer, x, w) for layer in layers]


def _alone(layer, x, weights):
    saved = layer._int8_weight, layer._int8_weight_scale, layer._int8_single
    layer._int8_weight, layer._int8_weight_scale, layer._int8_single = weights
    try:
        return layer_products(layer, x)
    finally:
        layer._int8_weight, layer._int8_weight_scale, layer._int8_single = saved


def test_each_member_gets_the_product_of_its_own_input(qkv):
    own = _own(qkv)
    group = SharedInput(["q", "k", "v"], qkv)
    assert group.agrees(qkv)
    group.serve(qkv)
    q, k, v = qkv
    a, b = torch.randn(1, 1, 64), torch.randn(1, 1, 64) * 3
    with torch.inference_mode():
        assert torch.equal(q(a), own[0](a))
        assert torch.equal(q(b), own[0](b))  # another caller's input in between (a second thread)
        assert torch.equal(k(a), own[1](a)) and torch.equal(v(a), own[2](a))
        assert torch.equal(k(b), own[1](b)) and torch.equal(v(b), own[2](b))
        c = torch.randn(1, 1, 64)
        assert [layer(c).shape[-1] for layer in qkv] == [64, 32, 32]
        assert group._last is None  # every member took its columns of c's product: it is released
        a.mul_(2.0)  # the same tensor, changed in place: a new round computes again
        assert torch.equal(q(a), own[0](a)) and torch.equal(q(a), own[0](a))
        rows = torch.randn(2, 5, 64)  # several tokens: the int_mm path
        assert all(torch.equal(layer(rows), f(rows)) for layer, f in zip(qkv, own))


def test_a_group_whose_product_differs_is_not_formed(qkv):
    group = SharedInput(["q", "k", "v"], qkv)
    qkv[1]._int8_weight_scale = qkv[1]._int8_weight_scale * 1.5  # k's own product now differs
    assert not group.agrees(qkv)


def test_a_grouped_layers_weights_cannot_be_set_alone(qkv):
    group = SharedInput(["q", "k", "v"], qkv)
    group.serve(qkv)
    with pytest.raises(RuntimeError, match="group's"):
        qkv[0].set_weight_bias(qkv[0].weight(), None)


def test_a_loaded_int8_model_does_not_keep_its_file_mapped(tiny_llama, tmp_path):
    """Its float tensors (norms, layers kept float) are copied out of the file's memory map, so
    the map, whose int8 pages were all read, is not held resident beside the built layers."""
    import gc

    from audit.models.meta import INT8_FILE
    from tests.test_sparse_storage import mapped

    folder = _variant(tiny_llama, tmp_path / "q")
    lm = drive(load_model(str(folder)))
    gc.collect()
    assert not mapped(folder / INT8_FILE)
    assert lm.generate([0, 5, 9], max_new_tokens=2, stop_at_eos=False).token_ids


@pytest.mark.parametrize("bias", [False, True])
def test_a_long_product_taken_in_slices_of_rows_is_the_same(bias, monkeypatch):
    from audit.compress import int8_products

    torch.manual_seed(3)
    ints = torch.randint(-127, 128, (40, 24), dtype=torch.int8)
    weight_scale = torch.rand(40) * 0.01
    offsets = torch.randn(40) if bias else None
    rows = torch.randn(23, 24) * torch.logspace(-3, 3, 23)[:, None]
    whole = int8_products.per_token_products(rows, ints, weight_scale, offsets)
    monkeypatch.setattr(int8_products, "PRODUCT_SLICE_ELEMENTS", 40 * 5)  # slices of 5 rows, the last of 3
    slices = []
    real = int8_products._rows_products
    monkeypatch.setattr(int8_products, "_rows_products", lambda rows, *a, **k: slices.append(len(rows)) or real(rows, *a, **k))
    sliced = int8_products.per_token_products(rows, ints, weight_scale, offsets)
    assert slices == [5, 5, 5, 5, 3] and torch.equal(whole, sliced)
    monkeypatch.setattr(int8_products, "PRODUCT_SLICE_ELEMENTS", 40 * 11)  # the last slice a single row
    assert torch.equal(whole, int8_products.per_token_products(rows, ints, weight_scale, offsets))


@pytest.mark.parametrize("scales", ["per-token", PER_TENSOR])
def test_int8_weights_are_read_one_layer_at_a_time_as_unpacked(scales, tiny_llama, tmp_path):
    """Facts (parameters, sparsity, bytes per token) read each layer's integers in turn: the
    integers a per-token layer holds, or its unpacked weights, the same either way."""
    import types

    from audit.models.torch_lm import quantized_linear_weights

    folder = _variant(tiny_llama, tmp_path / "q", QuantizeSettings(outliers=OutlierRule(ratio=None), activation_scales=scales))
    model = drive(load_model(str(folder))).model
    read = quantized_linear_weights(model)
    assert isinstance(read, types.GeneratorType)
    names = []
    for name, ints, zero_points, bias in read:
        weight = model.get_submodule(name).weight()
        assert torch.equal(ints, weight.int_repr())
        want = weight.q_per_channel_zero_points() if weight.qscheme() == torch.per_channel_affine else torch.tensor([weight.q_zero_point()])
        assert torch.equal(zero_points, want) and bias == 0
        names.append(name)
    assert len(names) == 15  # 7 linear layers in each of 2 blocks, and the head


def _int32_sums(levels, ints):
    """The reference: int8 x int8 summed in int32 (torch._int_mm), as float32."""
    return torch._int_mm(levels, ints.t()).to(torch.float32)


@pytest.mark.parametrize("slow", [True, False])
def test_level_products_are_the_int32_sums_whichever_way_they_are_taken(slow, monkeypatch):
    monkeypatch.setattr(int8_products, "int_mm_slow", lambda: slow)
    # By hand: 127 x 127 + (-127) x (-128) = 16,129 + 16,256.
    one = level_products(torch.tensor([[127, -127]], dtype=torch.int8), torch.tensor([[127, -128]], dtype=torch.int8))
    assert one.tolist() == [[32385.0]]
    assert EXACT_INPUTS == 1032  # 1,032 x 127 x 128 = 16,776,192 < 2^24 = 16,777,216
    generator = torch.Generator().manual_seed(1)
    for n_in in (24, EXACT_INPUTS, EXACT_INPUTS + 1, 1536, 4096):
        ints = torch.randint(-128, 128, (40, n_in), generator=generator, dtype=torch.int8)
        levels = torch.randint(-127, 128, (5, n_in), generator=generator, dtype=torch.int8)
        assert torch.equal(level_products(levels, ints), _int32_sums(levels, ints))
        # At the grid's ends, where the sums pass 2^24 beyond 1,032 inputs: added in int32,
        # then rounded to float32 once, as the int32 sums are.
        ends = torch.full((3, n_in), 127, dtype=torch.int8)
        ends[1] = -127
        extreme = torch.full((4, n_in), 127, dtype=torch.int8)  # 127 x 127: odd sums, which float32 rounds past 2^24
        extreme[1] = -128
        extreme[2, ::2] = -127
        assert torch.equal(level_products(ends, extreme), _int32_sums(ends, extreme))
        # Large levels of one sign, not all alike: sums past 2^24 that float32 cannot hold.
        large = torch.randint(100, 128, (6, n_in), generator=generator, dtype=torch.int8)
        assert torch.equal(level_products(large, large[:3]), _int32_sums(large, large[:3]))


@pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="FBGEMM is x86 only")
def test_a_single_tokens_levels_split_by_sign_give_the_int32_sums():
    # Full-range levels saturate a kernel that adds pairs of uint8 x int8 products in 16 bits
    # (127 + 128 = 255 as uint8, times 127, twice, is 64,770); split by sign they are 0-127.
    generator = torch.Generator().manual_seed(2)
    ints = torch.randint(-128, 128, (48, 576), generator=generator, dtype=torch.int8)
    ints[:8] = 127
    ints[8:16] = -128
    split = SignSplit(ints)
    tokens = [torch.randint(-127, 128, (1, 576), generator=generator, dtype=torch.int8) for _ in range(4)]
    tokens += [torch.full((1, 576), 127, dtype=torch.int8), torch.full((1, 576), -127, dtype=torch.int8), torch.zeros(1, 576, dtype=torch.int8)]
    for levels in tokens:
        assert torch.equal(split.sums(levels.to(torch.float32)), _int32_sums(levels, ints))
    assert SignSplit.fits(ints)  # 127 x 576 x 128 = 9.4 million
    # A whole token's product: quantized, split, rescaled and offset as the int32 path does it.
    weight_scale = torch.rand(48, generator=generator) * 0.01
    bias = torch.randn(48, generator=generator)
    rows = torch.randn(300, 576, generator=generator) * torch.logspace(-6, 4, 300)[:, None]
    rows[:, 7] *= 60.0  # one large channel, as hidden states have
    rows[0] = 0.0
    with torch.inference_mode():
        for offsets in (None, bias):
            want = int8_products._rows_products(rows, ints, weight_scale, offsets)  # int32 sums at 300 tokens
            got = torch.cat([split.token_products(rows[i : i + 1], weight_scale, offsets) for i in range(len(rows))])
            assert torch.equal(got, want)
    assert not SignSplit.fits(torch.full((2, EXACT_INPUTS + 1), -128, dtype=torch.int8))
    assert SignSplit.fits(torch.full((2, EXACT_INPUTS), -128, dtype=torch.int8))
    table = torch.zeros(9000, EXACT_INPUTS + 1, dtype=torch.int8)  # read in parts: the last one too
    assert SignSplit.fits(table)
    table[8500] = -128
    assert not SignSplit.fits(table)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_an_int8_model_gives_the_same_logits_whether_int_mm_is_fast_or_not(arch, tiny_model_factory, tmp_path, monkeypatch):
    """Where torch._int_mm is slow, float32 products of the levels and single tokens split by
    sign replace it; the logits are the same, bit for bit, for whole sequences and decode steps."""
    folder = _variant(tiny_model_factory(arch), tmp_path / "q")
    models = []
    for slow in (False, True):
        with monkeypatch.context() as patch:
            patch.setattr(int8_products, "int_mm_slow", lambda slow=slow: slow)
            patch.setattr(qz, "int_mm_slow", lambda slow=slow: slow)
            models.append((slow, drive(load_model(str(folder)))))
    singles = {slow: {type(layer._int8_single).__name__ for layer in per_token_layers(lm.model).values()} for slow, lm in models}
    if "fbgemm" in torch.backends.quantized.supported_engines and not qz._single_token_kernel_exact():
        assert "SignSplit" in singles[True] and "SignSplit" not in singles[False]
    ids = torch.tensor([[0, 5, 9, 17, 33, 60, 61, 7, 12]])
    for slow in (False, True):
        with monkeypatch.context() as patch:
            patch.setattr(int8_products, "int_mm_slow", lambda slow=slow: slow)
            with torch.inference_mode():
                whole = [lm.model(input_ids=ids).logits for _, lm in models]
                assert torch.equal(whole[0], whole[1])
                caches = [lm.model(input_ids=ids[:, :4], use_cache=True).past_key_values for _, lm in models]
                for step in range(4, ids.shape[1]):
                    outs = [lm.model(input_ids=ids[:, step : step + 1], past_key_values=c, use_cache=True).logits for (_, lm), c in zip(models, caches)]
                    assert torch.equal(outs[0], outs[1])
