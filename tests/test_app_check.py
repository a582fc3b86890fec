"""The Check screen driven with Pilot on a tiny model really audited and recorded: the audited
folder is cleared to ship, a folder with one weight changed is not, a wrong path is a notice that
loses nothing, and History lists the checks and opens one again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Static

from audit import fieldcheck
from audit.progress import Progress, check_cancel
from tests.app_support import FrozenDevice, fake_loader, paste_into, settle, type_into, wait_for
from tests.audited import change_one_weight
from tui.app import create_app

SIZE = (80, 24)


@pytest.fixture(scope="module")
def audited(passed_audit, tmp_path_factory):
    """The audited variant, its signed record and the lab's key; and a copy of the folder with
    one weight changed."""
    changed = tmp_path_factory.mktemp("changed") / "changed"
    change_one_weight(passed_audit["variant"], changed)
    return {"folder": passed_audit["variant"], "changed": changed, "record": passed_audit["record"], "public": passed_audit["public"]}


def held_step(model, record, cancel):
    """A check step that lasts until the check is cancelled."""
    deadline = time.monotonic() + 60  # never hold a failed test's worker for ever
    while not cancel.is_set() and time.monotonic() < deadline:
        yield Progress("perplexity", 0, 1, "held")
        time.sleep(0.05)
    check_cancel(cancel)


def make_app(store: Path):
    return create_app("smollm2-135m", store=str(store), device=FrozenDevice(), loader=fake_loader)


def shown(pilot, selector: str) -> str:
    return str(pilot.app.screen.query_one(selector, Static).content)


def notices(app) -> list[str]:
    return [n.message for n in app._notifications]


async def open_check_screen(pilot):
    await settle(pilot, pilot.app, until=lambda: pilot.app.session is not None)
    await pilot.press("6")
    await pilot.pause()
    assert pilot.app.current_mode == "check"


async def run_check(pilot, folder: Path, record: Path, trust: Path | None):
    await paste_into(pilot, "#check-model", str(folder))
    await paste_into(pilot, "#check-record", str(record))
    await paste_into(pilot, "#check-trust", str(trust) if trust else "")
    await pilot.press("ctrl+r")
    await pilot.pause()
    await settle(pilot, pilot.app, timeout=300)


@pytest.mark.asyncio
async def test_the_audited_folder_is_cleared_and_history_lists_the_check(audited, tmp_path, isolated_cache):
    app = make_app(tmp_path / "device.db")
    async with app.run_test(size=SIZE) as pilot:
        await open_check_screen(pilot)
        # The loaded model's folder is offered until another is typed.
        assert app.screen.query_one("#check-model", Input).value == app.session.facts.path
        await run_check(pilot, audited["folder"], audited["record"], audited["public"])

        verdict = shown(pilot, "#verdict")
        assert "✔ CLEARED TO SHIP" in verdict
        assert "MATCHES AUDIT run 1 (magnitude-50): cleared to ship" in verdict
        assert app.screen.query_one("#verdict").has_class("-cleared")
        check_id = app.field_check["check_id"]
        assert f"stored as check {check_id}" in shown(pilot, "#check-status")
        assert check_id == 1 and app.field_check["exit_code"] == 0

        # d: the five steps, each passed.
        details = app.screen.query_one("#check-details", Static)
        assert not details.display
        await pilot.press("d")
        assert details.display
        assert [s["status"] for s in app.field_check["steps"]] == ["pass"] * 5

        await pilot.press("5")
        await settle(pilot, app, until=lambda: bool(getattr(app.screen, "checks", None)))
        history = app.screen
        assert [c["id"] for c in history.checks] == [check_id]
        row = [str(cell) for cell in history.query_one("#checks", DataTable).get_row_at(0)]
        assert row[0] == str(check_id) and "cleared" in row[2] and row[3].startswith("MATCHES AUDIT run 1")
        assert len(history.runs) == 0  # the device's store holds no audit run, only the check

        # The check opens again on screen 6, from the store.
        app.field_check = None
        history.query_one("#checks", DataTable).focus()
        await pilot.press("enter")
        await settle(pilot, app, until=lambda: app.current_mode == "check" and app.field_check is not None)
        assert "cleared to ship" in shown(pilot, "#verdict")


@pytest.mark.asyncio
async def test_a_changed_weight_does_not_match_and_a_wrong_path_loses_nothing(audited, tmp_path, isolated_cache, monkeypatch):
    app = make_app(tmp_path / "device.db")
    async with app.run_test(size=SIZE) as pilot:
        await open_check_screen(pilot)

        # Nothing to check yet: a notice, the cursor in the empty field.
        await type_into(pilot, "#check-record", "")
        await pilot.press("ctrl+r")
        assert any("audit record" in n for n in notices(app))
        assert app.screen.focused is app.screen.query_one("#check-record", Input)

        await run_check(pilot, audited["changed"], audited["record"], audited["public"])
        verdict = shown(pilot, "#verdict")
        assert "✖ DO NOT SHIP" in verdict and "this is not the audited model" in verdict
        assert "DOES NOT MATCH: 1 tensor differs from the audited weights" in verdict
        assert app.screen.query_one("#verdict").has_class("-blocked")
        assert app.field_check["outcome"] == "mismatch" and app.field_check["exit_code"] == 1
        assert [s["status"] for s in app.field_check["steps"]] == ["pass", "fail", "skip", "skip", "skip"]

        # A record that is not there: one notice; the verdict and the form stay as they were.
        app.clear_notifications()
        missing = tmp_path / "no-such-record.json"
        await paste_into(pilot, "#check-record", str(missing))
        await pilot.press("ctrl+r")
        await settle(pilot, app)
        assert len(notices(app)) == 1 and str(missing) in notices(app)[0]
        assert "DOES NOT MATCH" in shown(pilot, "#verdict")
        assert "not checked" in shown(pilot, "#check-status")
        assert app.screen.query_one("#check-model", Input).value == str(audited["changed"])
        assert app.screen.query_one("#check-record", Input).value == str(missing)
        assert app.screen.focused is app.screen.query_one("#check-record", Input)

        # esc cancels a check under way (held at its perplexity step until then): nothing is
        # stored, the verdict shown stays.
        monkeypatch.setattr(fieldcheck, "_perplexity_step", held_step)
        await paste_into(pilot, "#check-model", str(audited["folder"]))
        await paste_into(pilot, "#check-record", str(audited["record"]))
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.job is not None and app.job.latest is not None and app.job.latest.message == "held")
        await pilot.pause(0.2)
        assert "step 4 of 5: measuring perplexity · held" in shown(pilot, "#check-status")
        await pilot.press("escape")
        await settle(pilot, app)
        assert "cancelled" in shown(pilot, "#check-status")
        assert "DOES NOT MATCH" in shown(pilot, "#verdict")

        await pilot.press("5")
        await settle(pilot, app, until=lambda: bool(getattr(app.screen, "checks", None)))
        assert [c["outcome"] for c in app.screen.checks] == ["mismatch"]
