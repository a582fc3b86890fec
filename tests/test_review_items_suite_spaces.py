"""Spaces around a suite's path are dropped, as they are around its name."""

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
