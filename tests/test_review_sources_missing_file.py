"""A missing model file under a folder (`models/x.gguf`) is named as a missing file, not fetched from the hub."""

import pytest

from audit.errors import UserError
from audit.models.sources import resolve_source
from tests.conftest import run_cli


@pytest.mark.parametrize("spec", ["models/x.gguf", "models/x.GGUF", "models/model.safetensors", "models/model.onnx", "models/pytorch_model.bin"])
def test_missing_model_file_is_no_such_file(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=rf"^no such file or folder: {spec}$"):
        resolve_source(spec)


def test_missing_gguf_on_the_command_line(tmp_path):
    result = run_cli("models", "info", "no-such-folder/x.gguf", env={"EDGE_AUDIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "edge-audit: error: no such file or folder: no-such-folder/x.gguf"


def test_a_hub_id_with_a_dot_stays_a_hub_id():
    assert resolve_source("someone/model-v1.5").kind == "hub"
