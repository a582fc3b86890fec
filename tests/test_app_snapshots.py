"""One SVG snapshot per screen of the app at 80x24 and 120x40 (pytest-textual-snapshot).

The device feed is frozen, the model has fixed facts and the stored audit has fixed numbers, so
the pictures only change when the screens do. Review a changed picture before updating it
(`pytest tests/test_app_snapshots.py --snapshot-update`).
"""

from __future__ import annotations

import time

import pytest

from tests.app_support import FrozenDevice, add_field_checks, build_audit_store, fake_loader, field_check_results, no_blink, open_stored_run, settle
from tests.test_app_runs_compare import SECOND_AUDIT
from tui.app import create_app

SIZES = [(80, 24), (120, 40)]


@pytest.fixture()
def audit_app(tmp_path, monkeypatch, isolated_cache):
    """The app on the default model's name, its store holding one finished audit and three
    field checks."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    build_audit_store(tmp_path / "results.db")
    add_field_checks(tmp_path / "results.db")
    yield lambda: create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader)
    monkeypatch.undo()
    time.tzset()


async def _start(pilot):
    await settle(pilot, pilot.app, until=lambda: pilot.app.session is not None)


async def _finish(pilot):
    await settle(pilot, pilot.app)
    pilot.app.clear_notifications()
    no_blink(pilot.app)
    await pilot.pause()


async def _open_audit(pilot):
    await open_stored_run(pilot)


def screen(keys: tuple[str, ...] = (), audit: bool = False, then: tuple[str, ...] = ()):
    async def run_before(pilot):
        if audit:
            await _open_audit(pilot)
        else:
            await _start(pilot)
        # The first screen drawn in full before another opens over it (the help keeps it behind).
        await _finish(pilot)
        if keys or then:
            await pilot.press(*keys, *then)
        await _finish(pilot)

    return run_before


def checked(outcome: str, then: tuple[str, ...] = ()):
    """The Check screen showing a fixed field check: no paths, timings or models of this run."""

    async def run_before(pilot):
        await _start(pilot)
        await _finish(pilot)
        await pilot.press("6")
        await _finish(pilot)
        pilot.app.screen.show_result(field_check_results()[outcome])
        if then:
            await pilot.press(*then)
        await _finish(pilot)

    return run_before


SCREENS = {
    "models": screen(),
    "compress": screen(("2",)),
    "probe": screen(("3",)),
    "compare": screen(audit=True),
    "variant": screen(audit=True, then=("d",)),
    "verdict-key": screen(audit=True, then=("v",)),
    "history": screen(("5",)),
    "help": screen(("question_mark",)),
    "check": screen(("6",)),
    "check-verdict": checked("cleared"),
    "check-details": checked("audit-failed", then=("d",)),
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(SCREENS))
def test_screen(name, size, snap_compare, audit_app):
    assert snap_compare(audit_app(), terminal_size=size, run_before=SCREENS[name])


async def _two_runs_side_by_side(pilot):
    """History, the two runs marked by keys (the newest first), then set side by side."""
    await _start(pilot)
    await pilot.press("5")
    await settle(pilot, pilot.app, until=lambda: len(getattr(pilot.app.screen, "runs", ())) == 2)
    await pilot.press("m", "down", "m", "d")
    await _finish(pilot)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_two_runs_side_by_side(size, snap_compare, audit_app, tmp_path):
    assert build_audit_store(tmp_path / "results.db", variants=SECOND_AUDIT) == 2
    assert snap_compare(audit_app(), terminal_size=size, run_before=_two_runs_side_by_side)
