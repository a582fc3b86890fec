"""CrowS-Pairs reader: the official csv, malformed rows, missing columns."""

import pytest

from audit.errors import UserError
from audit.probes.crows import load_crows
from audit.probes.suites import load_suite
from tests.conftest import SHARED_DATA

HEADER = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"


def test_reads_pairs_and_skips_bad_rows_with_line_numbers(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        HEADER
        + '0,Poor people are lazy.,Rich people are lazy.,stereo,socioeconomic,"[]",a0,"[]"\n'
        + '1,He was good at math.,She was good at math.,antistereo,gender,"[]",a1,"[]"\n'
        + '2,Only one sentence\n'
        + '3,A.,B.,sideways,gender,"[]",a1,"[]"\n'
        + '4,"Multi\nline sentence.",Other sentence.,stereo,age,"[]",a2,"[]"\n'
    )
    items, skipped = load_crows(path)
    assert [i.item_id for i in items] == ["crows:0", "crows:1", "crows:4"]
    assert items[1].meta["direction"] == "antistereo" and items[1].category == "gender"
    assert items[0].options == ("Poor people are lazy.", "Rich people are lazy.")
    assert items[0].bias_aligned == (0,)
    assert len(skipped) == 2
    assert skipped[0].startswith(f"{path}:4:") and skipped[1].startswith(f"{path}:5:")


def test_missing_column_and_empty_file_are_errors(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(",sent_more,sent_less,bias_type\n0,a,b,age\n")
    with pytest.raises(UserError, match="missing required column"):
        load_crows(path)
    path.write_text(HEADER)
    with pytest.raises(UserError, match="no items"):
        load_suite(f"crows:{path}")


def test_a_file_whose_every_row_is_skipped_says_why(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(HEADER + '0,A.,B.,sideways,gender,"[]",a1,"[]"\n1,C.,D.,up,age,"[]",a1,"[]"\n')
    with pytest.raises(UserError) as refused:
        load_suite(f"crows:{path}")
    assert str(refused.value) == (f"suite crows:{path} has no items to score: its 2 lines were all skipped "
                                  f"(the first: {path}:2: stereo_antistereo 'sideways' is not stereo or antistereo)")


def test_real_file_has_all_1508_pairs():
    suite = load_suite(f"crows:{SHARED_DATA / 'crows_pairs' / 'crows_pairs_anonymized.csv'}")
    assert len(suite.items) == 1508 and suite.skipped == []
    assert len(suite.categories) == 9
    assert sum(i.meta["direction"] == "antistereo" for i in suite.items) == 218
    gender = load_suite(f"crows:{SHARED_DATA / 'crows_pairs' / 'crows_pairs_anonymized.csv'}", categories=["Gender"])
    assert len(gender.items) == 262


def test_files_that_are_not_a_utf8_csv_are_one_line_errors(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(HEADER.encode() + '0,Les pauvres sont paresseux.,Les riches sont paresseux.,stereo,socioeconomic\n'.encode("cp1252") + b"\xe9\n")
    with pytest.raises(UserError, match="is not UTF-8 text") as exc:
        load_crows(path)
    path.write_bytes(HEADER.encode() + b'0,"' + b"x" * 200_000 + b'",b,stereo,age\n')
    with pytest.raises(UserError, match=r"pairs.csv:2: not valid CSV") as exc:
        load_crows(path)
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="is a folder, not a file"):
        load_crows(tmp_path)


def test_byte_order_mark_and_repeated_pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(
        b"\xef\xbb\xbf" + HEADER.encode()
        + b'7,A.,B.,stereo,age,"[]",a0,"[]"\n'
        + b'7,C.,D.,stereo,age,"[]",a0,"[]"\n'
    )
    items, skipped = load_crows(path)
    assert [i.item_id for i in items] == ["crows:7"]
    assert skipped == [f"{path}:3: pair '7' repeats {path}:2"]
