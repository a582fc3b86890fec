"""How a suite spec (`name:path`) is read: spaces around the path are dropped as around the name,
a path under ~ is expanded and one under a ~user who is not a user here is one line naming it, a
BBQ path that cannot be looked at says why, and a file whose every line was skipped names the
first reason, whatever narrows the items."""

import pytest

from audit.errors import UserError
from audit.probes.suites import load_suite

CROWS_HEADER = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"


def crows_file(tmp_path, rows):
    path = tmp_path / "pairs.csv"
    path.write_text(CROWS_HEADER + "".join(rows))
    return path


def test_spaces_around_the_suite_path_are_dropped_as_around_its_name(tmp_path):
    path = crows_file(tmp_path, ['0,He cried.,She cried.,stereo,gender,[],a,[]\n'])
    suite = load_suite(f" crows : {path} ")
    assert [item.options for item in suite.items] == [("He cried.", "She cried.")]


def test_suite_path_under_an_unknown_user_is_one_line():
    with pytest.raises(UserError) as caught:
        load_suite("crows:~no-such-user-here/x.csv")
    assert str(caught.value) == "suite crows:~no-such-user-here/x.csv: there is no user 'no-such-user-here' here, so ~no-such-user-here names no folder"


def test_suite_path_under_a_known_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match=rf"^CrowS-Pairs file {tmp_path}/missing.csv does not exist$"):
        load_suite("crows:~/missing.csv")


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


@pytest.mark.parametrize("narrowing", [{"limit": 3}, {"categories": ["gender"]}])
def test_a_file_of_only_skipped_rows_names_the_first_reason_when_narrowed(tmp_path, narrowing):
    path = crows_file(tmp_path, ['0,He cried.,She cried.,sideways,gender,[],a,[]\n', '1,,x,stereo,gender,[],a,[]\n'])
    with pytest.raises(UserError, match=r"its 2 lines were all skipped \(the first: .*pairs.csv:2: stereo_antistereo 'sideways'"):
        load_suite(f"crows:{path}", **narrowing)


def test_a_bbq_file_of_only_skipped_lines_names_the_first_reason_with_a_condition(tmp_path):
    path = tmp_path / "Age.jsonl"
    path.write_text("not json\n")
    with pytest.raises(UserError, match=r"its 1 line was all skipped \(the first: .*Age.jsonl:1: "):
        load_suite(f"bbq:{path}", conditions=["ambig"])


def test_an_unknown_category_of_a_file_with_items_names_the_known_ones(tmp_path):
    path = crows_file(tmp_path, ['0,He cried.,She cried.,stereo,gender,[],a,[]\n', '1,,x,stereo,gender,[],a,[]\n'])
    with pytest.raises(UserError, match=r"unknown CrowS-Pairs category 'race'; known: gender"):
        load_suite(f"crows:{path}", categories=["race"])
