"""A suite path under a ~user who is not a user here is one line naming it, not pathlib's bare RuntimeError."""

import pytest

from audit.errors import UserError
from audit.probes.suites import load_suite


def test_suite_path_under_an_unknown_user_is_one_line():
    with pytest.raises(UserError) as caught:
        load_suite("crows:~no-such-user-here/x.csv")
    assert str(caught.value) == "suite crows:~no-such-user-here/x.csv: there is no user 'no-such-user-here' here, so ~no-such-user-here names no folder"


def test_suite_path_under_a_known_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match=rf"^CrowS-Pairs file {tmp_path}/missing.csv does not exist$"):
        load_suite("crows:~/missing.csv")
