"""A model's weights that are not what they claim to be are refused in one line naming the file and
the problem, never loaded as they are."""

import json
import shutil
import struct

import pytest

from audit.compress.storage import SPARSE_FILE, dense_state, load_sparse, save_sparse
from audit.errors import UserError
from audit.models import LoadOptions, load_model
from audit.models.meta import SPARSE_FORMAT, WEIGHTS_META_KEY
from audit.progress import drive

def load(spec):
    return drive(load_model(str(spec), LoadOptions(threads=1)))


def refused(spec, pattern):
    with pytest.raises(UserError, match=pattern) as caught:
        load(spec)
    assert "\n" not in str(caught.value)
    return str(caught.value)


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
        (lambda m: {**m, "packed": {**m["packed"], "model.extra.weight": {"shape": [2, 2], "dtype": "float32"}}}, "lists model.extra.weight, whose bitmask or values it lacks"),
    ],
)
def test_sparse_metadata_of_the_wrong_shape_is_refused_naming_the_file(sparse, edit, pattern):
    path = sparse / SPARSE_FILE
    rewrite_layout(path, edit)
    with pytest.raises(UserError, match=pattern) as caught:
        load_sparse(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert str(path) in refused(sparse, pattern)
