"""A suite file whose every line was skipped names the first reason, whatever narrows the items."""

import pytest

from audit.errors import UserError
from audit.probes.suites import load_suite

CROWS_HEADER = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"


def crows_file(tmp_path, rows):
    path = tmp_path / "pairs.csv"
    path.write_text(CROWS_HEADER + "".join(rows))
    return path


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
