"""How a `--model` value is read: a folder is named after itself when given as `.`, `..` or a
weights file in it, a folder's config.json that names no model_type or an unknown one says so, a
missing model file under a folder is a missing file, not a hub id, and a value shaped like a hub
id that the hub would refuse is named as such, before any fetch."""

import json
import shutil

import pytest

from audit.errors import UserError
from audit.models.sources import resolve_source
from tests.conftest import run_cli
from tui.cli import main


def refused_when_resolved(spec, match, tmp_path, monkeypatch):
    """Resolving `spec` in an empty working folder is refused with an error matching `match`."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=match):
        resolve_source(spec)


def models_info(spec, tmp_path):
    """`models info SPEC` on the command line, offline, with a cache of its own."""
    return run_cli("models", "info", spec, env={"EDGE_AUDIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"})


@pytest.fixture()
def model_copy(tiny_llama, tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_llama, folder)
    (folder / "sub").mkdir()
    return folder


@pytest.mark.parametrize("spec, where", [(".", "."), ("..", "sub"), ("model.safetensors", "."), ("./model.safetensors", "."), ("sub/..", ".")])
def test_a_folder_named_by_dots_is_named_after_itself(model_copy, monkeypatch, spec, where):
    monkeypatch.chdir(model_copy / where)
    source = resolve_source(spec)
    assert source.kind == "folder" and source.name == "my-model"
    assert source.path.resolve() == model_copy


def test_models_info_of_the_working_folder_names_it(model_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_AUDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(model_copy)
    assert main(["models", "info", "--json", "."]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "my-model"


def folder_with_config(tmp_path, config):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_config_without_model_type_says_it_names_none(tmp_path):
    folder = folder_with_config(tmp_path, {"hidden_size": 8})
    with pytest.raises(UserError, match=r"config.json names no model_type") as caught:
        resolve_source(str(folder))
    assert "None" not in str(caught.value)


def test_config_with_an_unknown_model_type_names_it(tmp_path):
    folder = folder_with_config(tmp_path, {"model_type": "no-such-architecture"})
    with pytest.raises(UserError, match=r"has model_type 'no-such-architecture', which transformers does not know"):
        resolve_source(str(folder))


@pytest.mark.parametrize("spec", ["models/x.gguf", "models/x.GGUF", "models/model.safetensors", "models/model.onnx", "models/pytorch_model.bin"])
def test_missing_model_file_is_no_such_file(spec, tmp_path, monkeypatch):
    refused_when_resolved(spec, rf"^no such file or folder: {spec}$", tmp_path, monkeypatch)


def test_missing_gguf_on_the_command_line(tmp_path):
    result = models_info("no-such-folder/x.gguf", tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "edge-audit: error: no such file or folder: no-such-folder/x.gguf"


def test_a_hub_id_with_a_dot_stays_a_hub_id():
    assert resolve_source("someone/model-v1.5").kind == "hub"


@pytest.mark.parametrize("spec", ["someone/x..y", "someone/x--y", "someone/-x", "someone/x.", "someone/x.git", "someone/" + "a" * 97])
def test_invalid_hub_id_is_refused_when_resolved(spec, tmp_path, monkeypatch):
    refused_when_resolved(spec, r"^no such file or folder, and not a valid hub id \(.+\): someone/", tmp_path, monkeypatch)


def test_invalid_hub_id_on_the_command_line_says_so_not_offline(tmp_path):
    result = models_info("someone/x--y", tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "not a valid hub id" in lines[0] and "someone/x--y" in lines[0]
    assert "offline" not in lines[0] and "Traceback" not in result.stderr


def test_valid_hub_ids_stay_hub_ids():
    for spec in ("HuggingFaceTB/SmolLM2-135M-Instruct", "org_/x", "a/b.c-d_e"):
        assert resolve_source(spec).kind == "hub"


def test_hub_id_rules_agree_with_huggingface_hub(tmp_path, monkeypatch):
    """What resolve_source takes as a hub id is what the hub library would fetch, and the rest it refuses."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    monkeypatch.chdir(tmp_path)
    specs = ["a/b", "a/b.c", "a/b-c_d", "a/b..c", "a/b--c", "a/-b", "a/b-", "a./b", "a/.b", "a/b.git", "a/b.gitx",
             "a/" + "b" * 96, "a/" + "b" * 97, "a/b c", "a@b/c", "a/b!", "a-/b", "a/b_"]
    for spec in specs:
        try:
            validate_repo_id(spec)
            valid = True
        except HFValidationError:
            valid = False
        try:
            taken = resolve_source(spec).kind == "hub"
        except UserError as exc:
            assert "not a valid hub id" in str(exc), spec
            taken = False
        assert taken == valid, spec
