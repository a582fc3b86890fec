"""The compressed sparse format: smaller on disk, and decoded back to exactly the same bits."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from audit.compress.methods import PruneSpec
from audit.compress.prune import prune_layers
from audit.compress.storage import (
    DENSE_FILE,
    SPARSE_FILE,
    dense_state,
    load_sparse,
    save_dense,
    save_sparse,
    write_safetensors,
)
from audit.errors import UserError
from audit.models import load_model
from audit.progress import drive


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def half_zero(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g)
    return t.masked_fill(torch.rand(shape, generator=g) < 0.5, 0.0).to(dtype)


def test_round_trip_is_bit_identical_for_awkward_values(tmp_path):
    w = half_zero((16, 24))
    w[0, :4] = torch.tensor([-0.0, float("nan"), float("inf"), 1e-45])  # -0.0 must survive as -0.0
    items = [
        ("a.weight", w),
        ("b.weight", half_zero((8, 8), torch.bfloat16, seed=1)),
        ("c.weight", half_zero((8, 8), torch.float16, seed=2)),
        ("dense.weight", torch.randn(8, 8)),  # no zeros: stored as is
        ("norm.weight", torch.zeros(8)),  # 1-D: stored as is
        ("ids", torch.arange(6, dtype=torch.int64)),
        ("flags", torch.tensor([True, False, True])),
        ("empty", torch.zeros(0, 4)),
    ]
    path = tmp_path / SPARSE_FILE
    save_sparse(items, path)
    back = load_sparse(path)
    assert set(back) == {name for name, _ in items}
    for name, tensor in items:
        assert same_bits(back[name], tensor), name
    assert torch.signbit(back["a.weight"][0, 0])
    stored = load_file(path)
    assert "a.weight.bitmask" in stored and "dense.weight" in stored and "norm.weight" in stored


def test_half_sparse_tensor_is_about_17_of_32_bits_per_weight(tmp_path):
    w = half_zero((512, 512))
    nonzeros = int((w != 0).sum())
    dense = write_safetensors(tmp_path / "d.safetensors", [("w", w)], [("w", w.dtype, tuple(w.shape))])
    sparse = save_sparse([("w", w)], tmp_path / "s.safetensors")
    assert dense == (tmp_path / "d.safetensors").stat().st_size and sparse == (tmp_path / "s.safetensors").stat().st_size
    # Non-zero values (4 bytes each) plus one bit per weight, plus a header.
    assert sparse == pytest.approx(nonzeros * 4 + w.numel() / 8, abs=1024)
    assert sparse < 0.56 * dense


def test_streamed_dense_file_matches_what_transformers_saves(tiny_llama, tmp_path):
    model = drive(load_model(str(tiny_llama))).model
    ours = tmp_path / "ours"
    ours.mkdir()
    save_dense(model, ours)
    model.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    a, b = load_file(ours / DENSE_FILE), load_file(tmp_path / "theirs" / DENSE_FILE)
    assert set(a) == set(b) and "lm_head.weight" not in a  # tied head stored once, as transformers does
    assert all(same_bits(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pruned_model(tiny_llama):
    model = copy.deepcopy(drive(load_model(str(tiny_llama))).model)
    drive(prune_layers(model, "magnitude", PruneSpec(0.5)))
    return model


def test_pruned_model_reloads_bit_identical_and_smaller(pruned_model, tmp_path):
    items = dense_state(pruned_model)
    save_dense(pruned_model, tmp_path)
    save_sparse(items, tmp_path / SPARSE_FILE)
    dense_bytes = (tmp_path / DENSE_FILE).stat().st_size
    sparse_bytes = (tmp_path / SPARSE_FILE).stat().st_size
    assert sparse_bytes < 0.75 * dense_bytes  # the embeddings stay dense
    back = load_sparse(tmp_path / SPARSE_FILE)
    dense = load_file(tmp_path / DENSE_FILE)
    assert set(back) == set(dense) == {name for name, _ in items}
    for name, tensor in items:
        assert same_bits(back[name], tensor) and same_bits(dense[name], tensor), name


def test_compressed_folder_loads_to_the_same_model(pruned_model, tiny_llama, tmp_path):
    """A folder in the compressed format loads through load_model like any other."""
    from audit.compress.output import save_model_folder
    from audit.models.meta import SPARSE_FORMAT

    lm = drive(load_model(str(tiny_llama)))
    lm.model = pruned_model
    items = dense_state(pruned_model)
    meta = {"text_prefix_token": "<|endoftext|>", "storage": {"format": SPARSE_FORMAT, "file": SPARSE_FILE, "loaded_bytes": 400_000}}
    save_model_folder(lm, tmp_path, meta, lambda folder: save_sparse(items, folder / SPARSE_FILE))
    assert not (tmp_path / DENSE_FILE).exists()
    loaded = drive(load_model(str(tmp_path)))
    want, got = pruned_model.state_dict(), loaded.model.state_dict()
    assert set(want) == set(got)
    assert all(same_bits(want[k], got[k]) for k in want)
    assert loaded.model.lm_head.weight is loaded.model.get_input_embeddings().weight  # still tied
    facts = loaded.facts()
    assert facts.weight_sparsity == pytest.approx(0.5, abs=1e-3) and facts.size_on_disk_bytes < 300_000
    request = loaded.text_request("The quick brown", [" fox", " dog"])
    assert [s.logprob for s in loaded.score([request])[0]] == [s.logprob for s in lm.score([request])[0]]


def test_damaged_sparse_file_is_a_user_error(tmp_path):
    w = half_zero((8, 8))
    good = tmp_path / "good.safetensors"
    save_sparse([("w", w)], good)
    raw = good.read_bytes()
    meta = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    stored = {k: v.clone() for k, v in load_file(good).items()}
    values = stored["w.values"][:-1]  # one value lost
    damaged = tmp_path / "damaged.safetensors"
    write_safetensors(damaged, [("w.bitmask", stored["w.bitmask"]), ("w.values", values)], [("w.bitmask", torch.uint8, (8,)), ("w.values", values.dtype, tuple(values.shape))], meta)
    with pytest.raises(UserError, match="corrupt"):
        load_sparse(damaged)
    plain = tmp_path / "plain.safetensors"
    write_safetensors(plain, [("w", w)], [("w", w.dtype, (8, 8))])
    with pytest.raises(UserError, match="not an edge-audit compressed sparse file"):
        load_sparse(plain)


def mapped(path) -> bool:
    """Whether this process still maps `path` (Linux)."""
    with open("/proc/self/maps") as maps:
        return any(line.rstrip("\n").endswith(str(path.resolve())) for line in maps)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_decoded_tensors_do_not_keep_the_file_mapped(tmp_path):
    """A dense tensor read in place from the memory map would keep the whole file, packed pages
    included, resident as long as the model lives."""
    path = tmp_path / SPARSE_FILE
    save_sparse([("a.weight", half_zero((64, 64))), ("norm.weight", torch.ones(64)), ("embed.weight", torch.randn(32, 64))], path)
    back = load_sparse(path)
    import gc

    gc.collect()
    assert not mapped(path)
    assert torch.equal(back["norm.weight"], torch.ones(64))
