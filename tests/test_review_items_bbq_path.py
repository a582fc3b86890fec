"""A BBQ path that cannot be looked at says why, as the CrowS-Pairs and StereoSet paths do."""

import pytest

from audit.errors import UserError
from audit.probes.suites import load_suite


def test_a_symbolic_link_loop_is_named_as_one(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserError, match=rf"^BBQ path {tmp_path}/a: its symbolic links loop back on themselves$"):
        load_suite(f"bbq:{tmp_path / 'a'}")


def test_a_broken_symbolic_link_is_named_as_one(tmp_path):
    (tmp_path / "Age.jsonl").symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(UserError, match=rf"^BBQ path {tmp_path}/Age.jsonl is a broken symbolic link$"):
        load_suite(f"bbq:{tmp_path / 'Age.jsonl'}")


def test_a_name_too_long_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^BBQ path .*: a name in the path is longer than the file system allows$"):
        load_suite(f"bbq:{tmp_path / ('x' * 300)}")


def test_a_missing_path_still_says_it_does_not_exist(tmp_path):
    with pytest.raises(UserError, match=rf"^BBQ path {tmp_path}/none does not exist$"):
        load_suite(f"bbq:{tmp_path / 'none'}")
