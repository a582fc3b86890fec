"""A model given as `.`, `..` or a weights file in the working folder is named after its folder, not ''."""

import json
import shutil

import pytest

from audit.models.sources import resolve_source
from tui.cli import main


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
