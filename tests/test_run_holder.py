"""One process at a time runs a stored run's steps: the app's session holds its run until it is
closed, `edge-audit run` holds the run it runs, and another process that would run steps of a
held run is refused, leaving the run as its holder keeps it. A holder's end, however it ends,
lets the run go."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit.errors import UserError
from audit.models import LoadOptions
from audit.progress import drive
from audit.results import RunView, run_listing
from audit.runner import BASELINE, PERPLEXITY, close_run, driving, run_steps, start_run
from audit.store import ResultsStore
from tests.conftest import ROOT, run_cli
from tui.session import Session, continue_session, session_plan

HOLD = """
import sys
from pathlib import Path
from audit.runner import driving

with driving(int(sys.argv[1]), Path(sys.argv[2])):
    print("held", flush=True)
    sys.stdin.read()
"""


def hold_elsewhere(run_id: int, work_dir: Path) -> subprocess.Popen:
    """Another process holding the run, until its input closes or it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_id), str(work_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert process.stdout.readline().strip() == "held"
    return process


def held_elsewhere(run_id: int, work_dir: Path) -> bool:
    """Whether another process holds the run now (asked from a process of its own)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_id), str(work_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    out, err = process.communicate("", timeout=60)
    if out.strip() == "held":
        return False
    assert f"run {run_id} is being run by another process" in err
    return True


@pytest.fixture()
def session(tiny_llama, tmp_path):
    """An app session whose run exists (created by its first plan), with no step run yet."""
    plan = session_plan(str(tiny_llama))
    session = Session(plan, tmp_path / "results.db", LoadOptions())
    session._ensure_run(plan)
    yield session
    session.close()


def test_the_apps_run_is_refused_to_another_process_until_the_app_closes_it(session, tmp_path):
    store, run_id = str(session.store_path), session.run_id
    resumed = run_cli("run", "--resume", str(run_id), "--store", store)
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines() == [
        f"edge-audit: error: run {run_id} is being run by another process (the app, or edge-audit run); resume it once that process has ended"
    ]
    with ResultsStore(session.store_path) as results:
        assert results.run(run_id).status == "running"  # as the app keeps it
        assert results.steps(run_id) == []
    # Within the app's process the run is shared by its jobs, and held until the session closes.
    with driving(run_id, session.work_dir):
        pass
    assert held_elsewhere(run_id, session.work_dir)
    assert session.close() == "interrupted"
    assert not held_elsewhere(run_id, session.work_dir)


def test_a_run_held_elsewhere_is_left_as_it_is_and_free_once_its_holder_is_killed(session, tmp_path):
    run_id, work_dir = session.run_id, session.work_dir
    session.close()  # the run interrupted, with nothing run yet: what `run --resume` continues
    holder = hold_elsewhere(run_id, work_dir)
    try:
        message = f"run {run_id} is being run by another process"
        with pytest.raises(UserError, match=message):
            drive(run_steps(session.store_path, run_id, BASELINE, [PERPLEXITY]))
        with pytest.raises(UserError, match=message):
            close_run(session.store_path, run_id)
        loaded = []

        def loader(spec, options, cancel):
            loaded.append(spec)
            yield from ()

        with pytest.raises(UserError, match=message):
            drive(continue_session(run_id, session.store_path, LoadOptions(), loader, None))
        assert loaded == []  # refused before the model is loaded
        with ResultsStore(session.store_path) as results:
            assert results.run(run_id).status == "interrupted"
            assert results.steps(run_id) == []
    finally:
        holder.kill()
        holder.wait()
    assert not held_elsewhere(run_id, work_dir)  # the system let go of the killed holder's lock
    assert close_run(session.store_path, run_id) == "interrupted"


def test_a_run_whose_process_was_killed_is_listed_as_interrupted_not_as_going_on(tiny_llama, tmp_path):
    store_path = tmp_path / "results.db"
    run_id, work_dir = start_run(session_plan(str(tiny_llama)), store_path)  # stored as running

    def listed() -> tuple[str, str]:
        with ResultsStore(store_path, readonly=True) as results:
            (row,) = run_listing(results)
        return row["status"], row["verdict"]["state"]

    holder = hold_elsewhere(run_id, work_dir)
    try:
        assert listed() == ("running", "pending")
        shown = run_cli("runs", "list", "--store", str(store_path), "--json")
        assert shown.returncode == 0 and '"status": "running"' in shown.stdout
    finally:
        holder.kill()
        holder.wait()
    assert listed() == ("interrupted", "none")  # nothing runs it: resume it to go on
    shown = run_cli("runs", "list", "--store", str(store_path), "--json")
    assert shown.returncode == 0 and '"status": "interrupted"' in shown.stdout
    with ResultsStore(store_path) as results:
        assert results.run(run_id).status == "running"  # read, not rewritten
    with driving(run_id, work_dir):
        assert listed() == ("running", "pending")  # held by this process
    with ResultsStore(store_path, readonly=True) as results:
        assert RunView(results, run_id).run.status == "interrupted"  # `runs show` and the reports


@pytest.mark.asyncio
async def test_history_says_a_run_another_process_runs_is_not_to_continue_yet(tiny_llama, tmp_path, isolated_cache):
    from tests.app_support import FrozenDevice, fake_loader, settle
    from tui.app import create_app

    store_path = tmp_path / "results.db"
    run_id, work_dir = start_run(session_plan(str(tiny_llama)), store_path)
    holder = hold_elsewhere(run_id, work_dir)
    app = create_app("smollm2-135m", store=store_path, device=FrozenDevice(), loader=fake_loader)

    async def detail() -> str:
        await pilot.press("1", "5")  # History read again
        await settle(pilot, app, until=lambda: bool(getattr(app.screen, "runs", None)))
        return " ".join(str(app.screen.query_one("#run-detail").render()).split())

    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, app)
            assert "another process runs it now (edge-audit run, or another app); c continues it here once that has ended" in await detail()
            holder.kill()
            holder.wait()
            shown = await detail()
            assert f"c continues it here; headless: edge-audit run --resume {run_id}" in shown
            assert app.screen.runs[0]["status"] == "interrupted"
    finally:
        holder.kill()
        holder.wait()
