"""The app opens on a model, loads it in a worker and shows its facts; a bad model shows a notice."""

import contextlib

import pytest
from textual.worker import WorkerFailed

from tui.app import create_app
from textual.widgets import DataTable, Static


@pytest.mark.asyncio
async def test_app_loads_model_and_shows_facts(tiny_llama):
    app = create_app(str(tiny_llama))
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        table = app.query_one("#facts", DataTable)
        values = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[1]) for i in range(table.row_count)}
        assert values["backend"] == "pytorch"
        assert "LlamaForCausalLM" in values["architecture"]
        assert app.model is not None


@pytest.mark.asyncio
async def test_app_reports_a_bad_model_and_stays_up(tmp_path):
    app = create_app(str(tmp_path / "missing"))
    async with app.run_test(size=(100, 30)) as pilot:
        with contextlib.suppress(WorkerFailed):
            await app.workers.wait_for_complete()
        await pilot.pause()
        status = str(app.query_one("#status", Static).render())
        assert "no such file or folder" in status
        assert app.model is None
        await pilot.press("q")
