"""Every bad model input is refused with one clear line (exit 2), before anything heavy runs."""

import json
import shutil

import numpy as np
import pytest

from audit import atomic
from audit.errors import UserError
from audit.models import LoadOptions, load_model
from audit.models.loader import CACHE_FORMAT, cache_entry_for_gguf, prepare_gguf
from audit.models.meta import write_meta
from audit.models.sources import resolve_source
from audit.progress import drive
from tests.conftest import run_cli


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_alias_and_folder_resolve(tiny_llama):
    assert resolve_source("smollm2-135m").kind == "alias"
    source = resolve_source(str(tiny_llama))
    assert source.kind == "folder" and source.path == tiny_llama


def test_hub_id_is_recognised():
    source = resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert source.kind == "hub" and source.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-alias", "unknown model alias 'no-such-alias'; known: smollm2-135m"),
        ("./missing/folder", "no such file or folder: ./missing/folder"),
        ("missing.gguf", "no such file or folder: missing.gguf"),
    ],
)
def test_unknown_names(spec, message):
    with pytest.raises(UserError, match=message):
        resolve_source(spec)


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="has no config.json: not a Hugging Face model folder"):
        resolve_source(str(tmp_path))


def test_truncated_safetensors(tiny_llama, tmp_path):
    folder = copy_model(tiny_llama, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"model.safetensors is truncated: its header promises \d+ bytes, the file has \d+"):
        resolve_source(str(folder))


def test_garbage_safetensors(tiny_llama, tmp_path):
    folder = copy_model(tiny_llama, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(UserError, match="header is not valid JSON"):
        resolve_source(str(folder))


def test_folder_without_weights(tiny_llama, tmp_path):
    folder = copy_model(tiny_llama, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"has config.json but no weights \(\*.safetensors\)"):
        resolve_source(str(folder))


def test_folder_without_tokenizer(tiny_llama, tmp_path):
    folder = copy_model(tiny_llama, tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(UserError, match="has no tokenizer"):
        resolve_source(str(folder))


def test_pickle_checkpoint_needs_flag(tiny_llama, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = copy_model(tiny_llama, tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="refusing pickle checkpoint .*pytorch_model.bin.*--allow-pickle"):
        resolve_source(str(folder))
    with pytest.raises(UserError, match="refusing pickle checkpoint"):
        resolve_source(str(folder / "pytorch_model.bin"))
    assert resolve_source(str(folder), allow_pickle=True).pickle
    model = drive(load_model(str(folder), LoadOptions(allow_pickle=True)))
    assert model.facts().parameters > 0


def test_remote_code_needs_flag(tiny_llama, tmp_path):
    folder = copy_model(tiny_llama, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_custom_lm", auto_map={"AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="needs its own Python code .*--trust-remote-code"):
        resolve_source(str(folder))


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not gguf at all")
    with pytest.raises(UserError, match="is not a GGUF file"):
        resolve_source(str(bad))


def test_corrupt_gguf_is_refused_when_converted(tmp_path, isolated_cache):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(UserError, match="is a corrupt GGUF file"):
        drive(load_model(str(bad)))
    assert not any(p for p in (isolated_cache / "models").glob("gguf-*") if p.is_dir())


def test_a_killed_conversion_leaves_nothing_behind_the_next_one(tmp_path, isolated_cache):
    """A conversion killed while saving left its temporary folder (up to a whole float32 model)
    in the cache: the next conversion of that file removes it, even one that then fails."""
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    target = cache_entry_for_gguf(bad, None)
    left = target.parent / f".{target.name}.k1ll3d_x.tmp"
    left.mkdir(parents=True)
    (left / "model.safetensors").write_bytes(b"\0" * 4096)
    other = target.parent / f".{target.name}-other.k1ll3d_x.tmp"  # another entry's: not ours to remove
    other.mkdir()
    with pytest.raises(UserError, match="is a corrupt GGUF file"):
        drive(load_model(str(bad)))
    assert not left.exists() and other.is_dir()


def converted(folder, gguf):
    """A cache folder as a conversion of `gguf` leaves it, with a config and weights no model uses."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(folder / "model.safetensors"))
    stat = gguf.stat()
    write_meta(folder, {"cache_format": CACHE_FORMAT, "source": {"file": gguf.name, "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}})
    return (folder / "model.safetensors").read_bytes()


def test_a_conversion_killed_between_its_renames_puts_the_old_cache_back(tmp_path, isolated_cache):
    """Killed after the old cache folder was moved aside and before the new one took its place:
    the old one, whole, goes back in place and is used, with no conversion."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # read only if converted
    target = cache_entry_for_gguf(gguf, None)
    kept = target.parent / f".{target.name}.k1ll3d_x.old" / target.name
    weights = converted(kept, gguf)
    assert drive(prepare_gguf(gguf)) == target
    assert (target / "model.safetensors").read_bytes() == weights
    assert not kept.parent.exists()


def test_a_current_cache_is_tidied_of_what_a_killed_replacement_left(tmp_path, isolated_cache):
    """Killed while it deleted the cache folder it had replaced: the cache is current, and the
    half-deleted old one beside it is removed when the cache is next used, unless a process is
    converting into that entry then."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    target = cache_entry_for_gguf(gguf, None)
    converted(target, gguf)
    half = target.parent / f".{target.name}.k1ll3d_x.old" / f"{target.name}.replaced"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"\0" * 4096)
    with atomic.writer_lock(target):  # a converter at work: its folders are not touched
        assert drive(prepare_gguf(gguf)) == target
        assert half.is_dir()
    assert drive(prepare_gguf(gguf)) == target
    assert not half.parent.exists() and (target / "model.safetensors").is_file()


@pytest.mark.parametrize("fault", ["converted before conversions were checked", "weights file cut short"])
def test_a_cache_of_an_older_format_or_with_a_damaged_weights_file_is_converted_again(tmp_path, isolated_cache, fault):
    """A conversion an older edge-audit cached may hold values made up for a tensor its GGUF
    lacks, which no look at the cache can tell: the GGUF is read again, as is a damaged cache's."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # read only if converted
    target = cache_entry_for_gguf(gguf, None)
    weights = converted(target, gguf)
    if fault.startswith("converted"):
        write_meta(target, {"cache_format": 1, "source": {"file": gguf.name, "bytes": gguf.stat().st_size}})
    else:
        (target / "model.safetensors").write_bytes(weights[:-4])
    with pytest.raises(UserError, match="is a corrupt GGUF file"):
        drive(prepare_gguf(gguf))


def test_not_enough_memory_names_both_numbers(tiny_llama):
    with pytest.raises(UserError, match=r"not enough memory to load llama: needs about \d+ MB, 1 MB available"):
        drive(load_model(str(tiny_llama), LoadOptions(max_memory_mb=1)))


def test_bad_load_options():
    with pytest.raises(UserError, match="unknown dtype 'int3'"):
        LoadOptions(dtype="int3")
    with pytest.raises(UserError, match="threads must be at least 1"):
        LoadOptions(threads=0)


def test_offline_hub_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot fetch 'someone/some-model' from the Hugging Face hub .*--model PATH"):
        drive(load_model("someone/some-model"))


def _bad_inputs(tiny_llama, tmp_path):
    truncated = copy_model(tiny_llama, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:100])
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\xff" * 32)
    pickled = copy_model(tiny_llama, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    return [
        (["models", "info", str(tmp_path / "missing")], "no such file or folder"),
        (["models", "info", str(no_config)], "has no config.json"),
        (["models", "info", str(truncated)], "is truncated"),
        (["models", "info", str(corrupt)], "corrupt GGUF file"),
        (["models", "info", "not-an-alias"], "unknown model alias"),
        (["models", "info", str(pickled)], "refusing pickle checkpoint"),
        (["models", "info", str(tiny_llama), "--max-memory-mb", "1"], "not enough memory"),
        (["models", "info", str(tiny_llama), "--dtype", "int3"], "invalid choice"),
    ]


def test_cli_bad_inputs_exit_2_with_one_line(tiny_llama, tmp_path):
    for args, message in _bad_inputs(tiny_llama, tmp_path):
        result = run_cli(*args, env={"EDGE_AUDIT_CACHE": str(tmp_path / "cache")})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1, (args, result.stderr)
        assert message in lines[0] and "Traceback" not in result.stderr
        assert result.stdout == ""


def test_a_model_under_a_user_who_is_not_here_says_so(tmp_path):
    """As a path typed in the app or given on the command line says it: not 'no such file'."""
    with pytest.raises(UserError, match=r"^~nosuchuser/model: there is no user 'nosuchuser' here, so ~nosuchuser names no folder$"):
        resolve_source("~nosuchuser/model")
