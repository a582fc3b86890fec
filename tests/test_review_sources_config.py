"""A model folder's config.json that names no model_type says so."""

import json

import pytest

from audit.errors import UserError
from audit.models.sources import resolve_source


def test_config_without_model_type_says_it_names_none(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UserError, match=r"config.json names no model_type") as caught:
        resolve_source(str(folder))
    assert "None" not in str(caught.value)


def test_config_with_an_unknown_model_type_names_it(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(UserError, match=r"has model_type 'no-such-architecture', which transformers does not know"):
        resolve_source(str(folder))
