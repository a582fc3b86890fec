"""Loading and fingerprinting read a compressed sparse file's layout through one reader: they
accept the same files, decode them to the same bits, and refuse a damaged one with the same line."""

import json
import re
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from audit.compress.storage import SPARSE_FILE, load_sparse, save_sparse
from audit.errors import UserError
from audit.fingerprint import fingerprint_folder
from audit.models.meta import META_FILE, SPARSE_FORMAT, WEIGHTS_META_KEY
from audit.progress import drive

PACKED = "a.weight"


def half_zero(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g)
    return t.masked_fill(torch.rand(shape, generator=g) < 0.5, 0.0).to(dtype)


TENSORS = [
    (PACKED, half_zero((16, 24))),
    ("b.weight", half_zero((8, 8), torch.bfloat16, seed=1)),
    ("c.weight", half_zero((8, 8), torch.float16, seed=2)),
    ("d.weight", half_zero((5, 3, 7), torch.float64, seed=3)),
    ("zero.weight", torch.zeros(16, 16)),  # packed with no values at all
    ("dense.weight", torch.randn(8, 8, generator=torch.Generator().manual_seed(4))),
    ("norm.weight", torch.ones(8)),
    ("ids", torch.arange(6)),
    ("empty", torch.zeros(0, 4)),
]


def model_folder(folder, storage=None):
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "none"}')
    if storage:
        (folder / META_FILE).write_text(json.dumps({"storage": {"format": storage, "file": SPARSE_FILE}}))
    return folder


@pytest.fixture()
def sparse(tmp_path):
    folder = model_folder(tmp_path / "sparse", SPARSE_FORMAT)
    save_sparse(TENSORS, folder / SPARSE_FILE)
    return folder


def rewrite_layout(path, edit):
    """Rewrite the edge-audit metadata of a sparse file as `edit` returns it, tensors untouched;
    `edit` returning None drops it."""
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    layout = edit(json.loads(header["__metadata__"][WEIGHTS_META_KEY]))
    if layout is None:
        del header["__metadata__"][WEIGHTS_META_KEY]
    else:
        header["__metadata__"][WEIGHTS_META_KEY] = layout if isinstance(layout, str) else json.dumps(layout)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])


def rewrite_tensors(path, edit):
    """Rewrite the tensors of a sparse file after `edit` changed them in place, its metadata kept."""
    data = path.read_bytes()
    metadata = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]
    tensors = {name: tensor.clone() for name, tensor in load_file(path).items()}
    edit(tensors)
    save_file(tensors, path, metadata=metadata)


def entry(**changes):
    return lambda m: {**m, "packed": {**m["packed"], PACKED: {**m["packed"][PACKED], **changes}}}


def refusal(call):
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


DAMAGE = {
    "no layout": (lambda m: None, None, "is not an edge-audit compressed sparse file$"),
    "not JSON": (lambda m: "{", None, "is not an edge-audit compressed sparse file$"),
    "not an object": (lambda m: [m], None, "is damaged: its edge_audit metadata is not a JSON object$"),
    "another format": (lambda m: {**m, "format": "dense"}, None, "unsupported sparse format 'dense' v1$"),
    "a newer version": (lambda m: {**m, "version": 2}, None, "unsupported sparse format 'sparse-bitmask' v2$"),
    "a version string": (lambda m: {**m, "version": "1"}, None, "unsupported sparse format 'sparse-bitmask' v'1'$"),
    "packed as a list": (lambda m: {**m, "packed": list(m["packed"])}, None, "its edge_audit metadata lists the packed tensors as list, not as a JSON object$"),
    "no packed": (lambda m: {k: v for k, v in m.items() if k != "packed"}, None, "lists the packed tensors as NoneType, not as a JSON object$"),
    "an entry of text": (lambda m: {**m, "packed": {**m["packed"], PACKED: "x"}}, None, f"its edge_audit metadata gives packed tensor '{PACKED}' no valid shape and float dtype$"),
    "a shape of text": (entry(shape=["a", 24]), None, "no valid shape and float dtype$"),
    "a negative size": (entry(shape=[-16, -24]), None, "no valid shape and float dtype$"),
    "a size of true": (entry(shape=[True, 384]), None, "no valid shape and float dtype$"),
    "an unknown dtype": (entry(dtype="nn"), None, "no valid shape and float dtype$"),
    "an integer dtype": (entry(dtype="int8"), None, "no valid shape and float dtype$"),
    "a dtype of a list": (entry(dtype=["float32"]), None, "no valid shape and float dtype$"),
    "a dtype of an object": (entry(dtype={"float32": 1}), None, "no valid shape and float dtype$"),
    "no dtype": (lambda m: {**m, "packed": {**m["packed"], PACKED: {"shape": [16, 24]}}}, None, "no valid shape and float dtype$"),
    "a tensor it does not hold": (
        lambda m: {**m, "packed": {**m["packed"], "extra.weight": {"shape": [2, 2], "dtype": "float32"}}},
        None,
        "its edge_audit metadata lists extra.weight, whose bitmask or values the file does not hold$",
    ),
    "a tensor it holds unpacked": (
        lambda m: {**m, "packed": {**m["packed"], "dense.weight": m["packed"][PACKED]}},
        lambda t: t.update({"dense.weight.bitmask": t[f"{PACKED}.bitmask"].clone(), "dense.weight.values": t[f"{PACKED}.values"].clone()}),
        "its edge_audit metadata lists dense.weight as packed, and the file holds it unpacked too$",
    ),
    "another shape": (entry(shape=[7, 3]), None, rf"is corrupt: {PACKED}'s bitmask or values do not fit its shape \[7, 3\] and dtype float32$"),
    "a shape too large to count": (entry(shape=[2**70, 2**70]), None, "do not fit its shape"),
    "another dtype": (entry(dtype="float16"), None, "do not fit its shape \\[16, 24\\] and dtype float16$"),
    "values of two dimensions": (None, lambda t: t.update({f"{PACKED}.values": t[f"{PACKED}.values"].reshape(1, -1)}), "do not fit its shape"),
    "a bitmask of another dtype": (None, lambda t: t.update({f"{PACKED}.bitmask": t[f"{PACKED}.bitmask"].to(torch.int8)}), "do not fit its shape"),
    "a value lost": (None, lambda t: t.update({f"{PACKED}.values": t[f"{PACKED}.values"][:-1]}), rf"is corrupt: {PACKED} has \d+ values for \d+ mask bits$"),
    "a value too many": (None, lambda t: t.update({"zero.weight.values": torch.ones(1)}), r"is corrupt: zero.weight has 1 values for 0 mask bits$"),
}


@pytest.mark.parametrize("layout_edit, tensors_edit, pattern", list(DAMAGE.values()), ids=list(DAMAGE))
def test_loading_and_fingerprinting_refuse_damage_with_one_line(sparse, layout_edit, tensors_edit, pattern):
    path = sparse / SPARSE_FILE
    if tensors_edit:
        rewrite_tensors(path, tensors_edit)
    if layout_edit:
        rewrite_layout(path, layout_edit)
    loading = refusal(lambda: load_sparse(path))
    fingerprinting = refusal(lambda: drive(fingerprint_folder(sparse)))
    assert loading == fingerprinting
    assert loading.startswith(str(path))
    assert re.search(pattern, loading), loading


def test_a_sparse_folder_decodes_to_its_dense_weights_and_fingerprint(sparse, tmp_path):
    """A tensor stored as a bitmask with no values (all zero) included."""
    decoded = load_sparse(sparse / SPARSE_FILE)
    assert set(decoded) == {name for name, _ in TENSORS}
    for name, tensor in TENSORS:
        assert decoded[name].dtype == tensor.dtype and torch.equal(decoded[name].view(torch.uint8), tensor.view(torch.uint8)), name
    assert "zero.weight.bitmask" in load_file(sparse / SPARSE_FILE)
    dense = model_folder(tmp_path / "dense")
    save_file(dict(TENSORS), dense / "model.safetensors")
    packed, plain = drive(fingerprint_folder(sparse)), drive(fingerprint_folder(dense))
    assert (packed.storage, plain.storage) == (SPARSE_FORMAT, "safetensors")
    assert packed.tensors == plain.tensors and packed.n_values == plain.n_values and packed.digest == plain.digest


@pytest.mark.parametrize("storage", [SPARSE_FORMAT, None])
def test_a_fingerprint_stopped_part_way_unmaps_its_file_at_once(sparse, tmp_path, monkeypatch, storage):
    import gc
    import sys
    import threading

    from audit.progress import Cancelled

    folder = sparse
    if storage is None:
        folder = model_folder(tmp_path / "dense")
        save_file(dict(TENSORS), folder / "model.safetensors")
    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    cancel = threading.Event()
    job = fingerprint_folder(folder, cancel)
    with pytest.raises(Cancelled):
        for step, _ in enumerate(job):
            if step == 2:  # a tensor's bytes are being hashed
                cancel.set()
    del job
    gc.collect()
    # Before, the stopped job's mapping was closed while a tensor's view was held, and the
    # BufferError was printed to stderr as an ignored exception's traceback.
    assert ignored == []
