"""A `--model` value shaped like a hub id that the hub would refuse is named as such, before any fetch."""

import pytest

from audit.errors import UserError
from audit.models.sources import resolve_source
from tests.conftest import run_cli


@pytest.mark.parametrize("spec", ["someone/x..y", "someone/x--y", "someone/-x", "someone/x.", "someone/x.git", "someone/" + "a" * 97])
def test_invalid_hub_id_is_refused_when_resolved(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^no such file or folder, and not a valid hub id \(.+\): someone/"):
        resolve_source(spec)


def test_invalid_hub_id_on_the_command_line_says_so_not_offline(tmp_path):
    result = run_cli("models", "info", "someone/x--y", env={"EDGE_AUDIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"})
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
