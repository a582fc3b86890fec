"""Every table of the app fits the width it has, at 80x24 and at 120x40, with the stored audit:
no cell's text is cut at the table's edge, intervals read "0.43 ±0.34", columns that do not fit
are left out and said so, dialogs wrap their question, and the sweep's charts use the rows they
have with their key beside or below the plot, never over it."""

from __future__ import annotations

import re
import time

import pytest
from rich.text import Text
from textual.geometry import Region
from textual.widgets import DataTable, Static

from audit.sweep import CURVES
from tests.app_support import FrozenDevice, add_field_checks, build_audit_store, fake_loader, field_check_results, open_stored_run, settle, show_on_compare
from tests.test_app_sweep import pruned, report_data
from tui.app import create_app
from tui.screens.dialogs import AskPathScreen, ConfirmScreen
from tui.widgets.charts import SweepChart, SweepCharts
from tui.widgets.comparison import ComparisonTable
from tui.widgets.numbers import half_width, pct_spread, spread, with_spread
from tui.widgets.probe_metrics import ProbeMetricsTable

SMALL, LARGE = (80, 24), (120, 40)
SIZES = pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
# "0.43 ±0.34", "-0.35 ±0.28", "0.50 ±∞": a figure and the half-width of its 95% interval.
SPREAD = re.compile(r"^-?\d+\.\d\d ±(\d+\.\d\d|∞)$")


@pytest.fixture()
def audit_app(tmp_path, monkeypatch, isolated_cache):
    """The app on the default model's name, its store holding one finished audit and three
    field checks (as the snapshots have it)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    build_audit_store(tmp_path / "results.db")
    add_field_checks(tmp_path / "results.db")
    yield create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader)
    monkeypatch.undo()
    time.tzset()


@pytest.fixture()
def app(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.chdir(tmp_path)
    return create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader)


async def open_audit(pilot):
    """The stored audit on Compare, opened from History as a technician opens it."""
    await open_stored_run(pilot)
    await pilot.pause()


async def show_report(pilot, data):
    """`data` on Compare as a stored run."""
    await show_on_compare(pilot, data)
    await pilot.pause()


def plain(cell) -> Text:
    return Text.from_markup(cell) if isinstance(cell, str) else cell


def cells(table: DataTable) -> list[list[str]]:
    """Each row's cells as the table holds them, the header first."""
    header = [column.label.plain for column in table.ordered_columns]
    return [header] + [[plain(c).plain for c in table.get_row_at(i)] for i in range(table.row_count)]


def assert_nothing_cut(table: DataTable) -> None:
    """Every cell's text stands whole on the line the table draws for its row, inside the
    screen: no column runs past the table's edge, none is narrower than its longest cell."""
    assert table.region.right <= table.app.size.width
    assert table.max_scroll_x == 0, f"{table.id}: {table.virtual_size.width} columns wide in {table.scrollable_content_region.width}"
    rows = [table.get_row_at(i) for i in range(table.row_count)]
    for index, column in enumerate(table.ordered_columns):
        widest = max([column.label.cell_len] + [plain(row[index]).cell_len for row in rows])
        assert column.get_render_width(table) >= widest + 2 * table.cell_padding
    shown_rows = min(table.row_count + 1, table.scrollable_content_region.height)
    for y, row in enumerate(cells(table)[:shown_rows]):
        line = table.render_line(y).text
        for text in row:
            assert text in line, f"{table.id}: {text!r} is cut on its line {line!r}"


def widget_text(widget) -> str:
    """What a widget draws with its edges, its lines joined, every run of spaces one space."""
    lines = [strip.text for strip in widget.render_lines(Region(0, 0, *widget.outer_size))]
    return " ".join(" ".join(lines).split())


def whole(text: str) -> str:
    return " ".join(text.split())


# -- the numbers ------------------------------------------------------------------------------
def test_an_interval_is_its_value_plus_minus_its_wider_half():
    symmetric = {"value": 0.5, "ci95": [0.36, 0.64], "n": 40}
    assert with_spread(symmetric) == "0.50 ±0.14"
    # Asymmetric: the wider side, so the written range covers the whole interval.
    near_zero = {"value": 0.07, "ci95": [0.0, 0.38], "n": 14}
    assert half_width(near_zero) == pytest.approx(0.31) and with_spread(near_zero) == "0.07 ±0.31"
    assert with_spread({"value": -0.35, "ci95": [-0.63, -0.12], "n": 9}) == "-0.35 ±0.28"
    assert spread({"value": 0.5, "ci95": [None, 0.9], "n": 4}).plain == "±∞"  # one side unbounded
    assert with_spread({"value": 0.5, "ci95": None, "n": 4}) == "0.50" and with_spread(None) == "-"
    assert pct_spread({"value": 150.0, "ci95": [-25.0, 1838.0], "n": 18}).plain == "±1,688%"
    assert pct_spread({"value": 3.6, "ci95": [2.2, 5.0], "n": 10}).plain == "±1.4%"


# -- Compare ----------------------------------------------------------------------------------
@pytest.mark.asyncio
@SIZES
async def test_the_comparison_of_the_stored_audit_fits_with_every_number_whole(audit_app, size):
    async with audit_app.run_test(size=size) as pilot:
        await open_audit(pilot)
        table = audit_app.screen.query_one(ComparisonTable)
        assert_nothing_cut(table)
        assert table.shown_keys == ["metric", "baseline", "wanda-50", "magnitude-50", "int8-dynamic"]
        assert table.left_out == ()
        labels = [row[0] for row in cells(table)[1:]]
        assert "peak RSS, MB" in labels and ("size on disk, MB" in labels or "disk size, MB" in labels)
        transition = str(table.get_cell("transition_rate", "wanda-50"))
        assert SPREAD.match(transition), transition
        assert transition == with_spread(audit_app.compared["variants"][1]["probes"]["builtin"]["comparison"]["transition_rate"])
        # Every bias score has its interval, the baseline's and a degraded variant's too; with
        # room, the difference from the baseline's follows.
        for key in ("bias_score_ambig", "bias_score_disambig"):
            for name in table.shown_keys[1:]:
                score = str(table.get_cell(key, name))
                if size == LARGE and name in ("wanda-50", "int8-dynamic"):
                    assert re.match(r"^-?\d+\.\d\d ±\d+\.\d\d [+-]\d+\.\d\d$", score), score
                else:
                    assert SPREAD.match(score), score
        if size == LARGE:
            perplexity = str(table.get_cell("perplexity", "wanda-50"))
            assert re.search(r" ±\d+(\.\d)?%$", perplexity), perplexity


def sweep_of(count: int) -> dict:
    """A sweep of `count` pruned variants of two methods: too many to stand side by side."""
    variants = [
        pruned(f"{method}-{10 * step}", method, step / 10, (0.3, 0.2, 0.4), (0.1, 0.05, 0.2), (2.0 * step, step, 3.0 * step))
        for step in range(1, count // 2 + 1)
        for method in ("wanda", "magnitude")
    ]
    return report_data(variants)


@pytest.mark.asyncio
@SIZES
async def test_variants_that_do_not_fit_are_left_out_said_so_and_reached_with_the_arrows(app, size):
    data = sweep_of(10)
    names = [v["name"] for v in data["variants"]]
    async with app.run_test(size=size) as pilot:
        await show_report(pilot, data)
        table = app.screen.query_one(ComparisonTable)
        assert_nothing_cut(table)
        assert table.left_out and table.shown_keys[:3] == ["metric", "baseline", names[1]]
        assert table.ordered_columns[0].label.plain == f"{len(table.left_out)} more: ← →"
        seen = []
        table.focus()
        for _ in names[1:]:
            chosen = table.selected_variant()
            seen.append(chosen)
            assert chosen in table.shown_keys
            assert_nothing_cut(table)
            await pilot.press("right")
            await pilot.pause()
        assert seen == names[1:]  # every variant reached, in the report's order
        assert table.selected_variant() == names[-1]
        for _ in names[1:]:
            await pilot.press("left")
            await pilot.pause()
        assert table.selected_variant() == "baseline"


# -- the sweep's charts -----------------------------------------------------------------------
def key_and_plot(chart: SweepChart):
    return chart.query_one(".chart-key", Static), chart.plot


@pytest.mark.asyncio
async def test_at_120x40_the_charts_take_the_rows_left_with_their_keys_below_the_plots(audit_app):
    async with audit_app.run_test(size=LARGE) as pilot:
        await open_audit(pilot)
        charts = audit_app.screen.query_one(SweepCharts)
        assert charts.all_shown and charts.region.height > 20
        tops = set()
        for chart in charts.query(SweepChart):
            key, plot = key_and_plot(chart)
            assert plot.region.height >= 15
            assert key.region.y >= plot.region.bottom  # below the plot, not over it
            assert chart.key_lines(chart.key, key.size.width) <= key.region.height  # said whole
            tops.add((plot.region.y, plot.region.height))
        assert len(tops) == 1  # the three plots line up


@pytest.mark.asyncio
async def test_at_80x24_the_chart_has_every_row_the_table_leaves_and_its_key_beside_it(audit_app):
    async with audit_app.run_test(size=SMALL) as pilot:
        await open_audit(pilot)
        screen = audit_app.screen
        charts = screen.query_one(SweepCharts)
        table = screen.query_one(ComparisonTable)
        footer_y = audit_app.size.height - 1
        assert charts.region.y == table.region.bottom and charts.region.bottom == footer_y
        for curve in CURVES:
            chart = charts.query_one(f"#chart-{curve}", SweepChart)
            if not chart.display:
                await pilot.press("c")
                await pilot.pause()
            key, plot = key_and_plot(chart)
            assert plot.region.height == charts.region.height
            assert key.region.x >= plot.region.right  # beside the plot, not over it
            said = chart.fitted_key(key.size.width, key.size.height)
            assert chart.key_lines(said, key.size.width) <= key.region.height
            assert whole(said.plain) in widget_text(key)


@pytest.mark.asyncio
async def test_a_key_too_long_for_the_rows_beside_its_plot_is_said_more_briefly(app):
    # Magnitude pruning too degraded to judge at each of its four sparsities: a long list.
    variants = [
        pruned(f"magnitude-{int(100 * s)}", "magnitude", s, (0.4, 0.3, 0.5), (0.2, 0.1, 0.3), (6.0, 4.0, 8.0), degraded=True)
        for s in (0.2, 0.3, 0.5, 0.7)
    ] + [
        pruned(f"{method}-50", method, 0.5, (0.4, 0.3, 0.5), (0.2, 0.1, 0.3), (6.0, 4.0, 8.0)) for method in ("wanda", "sparsegpt")
    ]
    async with app.run_test(size=SMALL) as pilot:
        await show_report(pilot, report_data(variants))
        chart = app.screen.query_one("#chart-srs", SweepChart)
        key, _ = key_and_plot(chart)
        assert chart.key_lines(chart.key, key.size.width) > key.region.height  # the full key would not fit
        said = chart.fitted_key(key.size.width, key.size.height)
        assert chart.key_lines(said, key.size.width) <= key.region.height
        assert "magnitude: 4 not plotted" in said.plain and "sparsegpt" in said.plain and "wanda" in said.plain
        assert whole(said.plain) in widget_text(key)


@pytest.mark.asyncio
async def test_a_method_too_long_for_a_line_of_the_key_is_cut_there(app):
    """Wanda with its output and down projections kept dense is a method of its own: its name
    and magnitude's note did not fit the key beside the plot at 80x24, and the last line was
    not shown at all."""
    variants = [
        pruned("magnitude-50", "magnitude", 0.5, (0.4, 0.3, 0.5), (0.2, 0.1, 0.3), (6.0, 4.0, 8.0), degraded=True),
        pruned("wanda-50", "wanda", 0.5, (0.4, 0.3, 0.5), (0.2, 0.1, 0.3), (6.0, 4.0, 8.0)),
        pruned("wanda-50-keep", "wanda (except *.o_proj, *.down_proj)", 0.5, (0.4, 0.3, 0.5), (0.2, 0.1, 0.3), (6.0, 4.0, 8.0)),
    ]
    async with app.run_test(size=SMALL) as pilot:
        await show_report(pilot, report_data(variants))
        chart = app.screen.query_one("#chart-srs", SweepChart)
        key, _ = key_and_plot(chart)
        said = chart.fitted_key(key.size.width, key.size.height)
        assert chart.key_lines(said, key.size.width) <= key.region.height and whole(said.plain) in widget_text(key)
        # Five rows: the heading's two and one for each method, each cut to a line.
        width = key.size.width
        from tui.widgets.charts import key_text

        assert chart.key_lines(key_text(chart.curve, *chart._parts, form="counts", position=chart.position), width) > 5
        short = chart.fitted_key(width, 5)
        assert chart.key_lines(short, width) == 5
        lines = short.plain.splitlines()[-3:]
        assert lines[0].startswith("━━ magnitude: 1 not") and lines[1] == "━━ wanda"
        assert lines[2].startswith("━━ wanda (except") and lines[2].endswith("…") and len(lines[2]) == width


def test_a_long_method_takes_at_most_its_cells_in_a_table():
    from tui.widgets.fitted_table import METHOD_CELLS, method_cell

    assert method_cell("wanda 2:4").plain == "wanda 2:4"
    cut = method_cell("wanda (except *.o_proj, *.down_proj)")
    assert cut.cell_len == METHOD_CELLS and cut.plain == "wanda (except *.o_proj,…"


# -- Probe ------------------------------------------------------------------------------------
@pytest.mark.asyncio
@SIZES
async def test_the_probe_table_of_the_stored_audit_fits_with_its_intervals_as_plus_minus(audit_app, size):
    async with audit_app.run_test(size=size) as pilot:
        await open_audit(pilot)
        audit_app.report = audit_app.compared  # the Probe screen shows the figures stored
        await pilot.press("3")
        await settle(pilot, audit_app)
        table = audit_app.screen.query_one(ProbeMetricsTable)
        assert table.row_count == 2 + 5
        assert_nothing_cut(table)
        rows = cells(table)
        # Every bias figure has its interval, at 80 columns too (the mean of categories is
        # named more briefly there); with room, the accuracies have theirs.
        assert all(SPREAD.match(text) for row in rows[1:] for text in row[1:4]), rows
        assert rows[2][0] == ("category mean" if size == SMALL else "mean of categories")
        if size == LARGE:
            assert all(SPREAD.match(text) for row in rows[1:] for text in row[4:6]), rows


def many_categories() -> dict:
    """A probe's figures over eleven categories with long names (as BBQ has them)."""
    names = ["Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance", "Race_ethnicity",
             "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation"]

    def figures(shift: float) -> dict:
        def est(value):
            return {"value": value, "ci95": [value - 0.31, value + 0.27], "n": 40}

        return {"srs": est(0.2 + shift), "bias_score_ambig": est(-0.35 + shift), "bias_score_disambig": est(-0.41 + shift),
                "accuracy_ambig": est(0.61), "accuracy_disambig": est(0.72), "n_items": 1234}

    return {"overall": figures(0.0), "category_mean": figures(0.01),
            "categories": {name: figures(i / 100) for i, name in enumerate(names)}}


@pytest.mark.asyncio
async def test_a_probe_table_too_wide_leaves_out_the_least_important_columns_and_says_so(app):
    async with app.run_test(size=(64, 24)) as pilot:
        await settle(pilot, app, until=lambda: app.session is not None)
        await pilot.press("3")
        await pilot.pause()
        table = app.screen.query_one(ProbeMetricsTable)
        table.show(many_categories())
        await pilot.pause()
        await pilot.pause()
        assert table.show_vertical_scrollbar  # thirteen rows: the scrollbar takes room too
        assert_nothing_cut(table)
        # The item counts go first, then the accuracies from the right; the category and SRS stay.
        assert table.left_out[0] == "items" and table.shown_keys[:2] == ["category", "srs"]
        assert "left out for room: " + ", ".join(table.left_out) in table.border_subtitle
        assert "left out for room" in widget_text(table)
        # Figures of fewer columns, then none (a model with no probe stored): nothing is left out.
        sentence = {"overall": {"pct_stereotype": {"value": 0.58, "ci95": [0.5, 0.66], "n": 40}, "n_items": 40}, "categories": {}}
        table.show(sentence)
        await pilot.pause()
        assert table.shown_keys == ["category", "pct_stereotype", "items"] and table.left_out == ()
        assert not table.has_class("-left-out") and cells(table)[1][1] == "0.58 ±0.08"
        table.show(None)
        await pilot.pause()
        assert table.row_count == 0 and table.shown_keys == []


# -- the variant's detail view -----------------------------------------------------------------
@pytest.mark.asyncio
@SIZES
async def test_the_variants_category_table_fits(audit_app, size):
    async with audit_app.run_test(size=size) as pilot:
        await open_audit(pilot)
        await pilot.press("d")
        await settle(pilot, audit_app)
        await pilot.pause()
        assert_nothing_cut(audit_app.screen.query_one("#categories-table", DataTable))


# -- History and Check ------------------------------------------------------------------------
@pytest.mark.asyncio
@SIZES
async def test_the_history_tables_fit(audit_app, size):
    async with audit_app.run_test(size=size) as pilot:
        await settle(pilot, audit_app, until=lambda: audit_app.session is not None)
        await pilot.press("5")
        await settle(pilot, audit_app, until=lambda: bool(getattr(audit_app.screen, "runs", None)))
        await pilot.pause()
        for table in audit_app.screen.query(DataTable):
            if table.display and table.row_count:
                assert_nothing_cut(table)


@pytest.mark.asyncio
@SIZES
async def test_what_each_check_step_found_is_read_whole(audit_app, size):
    result = field_check_results()["mismatch"]
    async with audit_app.run_test(size=size) as pilot:
        await settle(pilot, audit_app, until=lambda: audit_app.session is not None)
        await pilot.press("6")
        await pilot.pause()
        audit_app.screen.show_result(result)
        await pilot.press("d")
        await pilot.pause()
        details = audit_app.screen.query_one("#check-details", Static)
        assert details.region.right <= audit_app.size.width
        drawn = widget_text(details)
        for step in result["steps"]:
            assert step["name"] in drawn
            # The long findings wrap inside their column: every word of them is on screen whole.
            for word in step["summary"].split():
                assert word in drawn, word
        assert whole(f"folder {result['model_path']}") in drawn


# -- dialogs ----------------------------------------------------------------------------------
QUIT = ("probe every model (baseline, wanda-50, magnitude-50, int8-dynamic) is running.\n"
        "Quit? It is cancelled; every step that finished stays in the store.")


@pytest.mark.asyncio
@SIZES
async def test_a_dialogs_question_wraps_never_cut(app, size):
    async with app.run_test(size=size) as pilot:
        await settle(pilot, app, until=lambda: app.session is not None)
        for dialog in (ConfirmScreen(QUIT), AskPathScreen("Plan file or shipped plan to run (quick, rath-maliakkal-2026; "
                                                          "blank runs default: every method, slow) [a/b]")):
            app.push_screen(dialog)
            await pilot.pause()
            await pilot.pause()
            question = dialog.query_one(".question")
            box = dialog.query_one(".dialog")
            assert question.region.right <= box.region.right and box.region.right <= size[0]
            assert widget_text(question) == whole(dialog.question)
            app.pop_screen()
            await pilot.pause()


@pytest.mark.asyncio
async def test_a_long_model_path_is_shown_whole_under_the_facts(tmp_path, monkeypatch, isolated_cache):
    from dataclasses import replace

    from tests.app_support import FACTS, FakeModel

    path = "/opt/edge/models/smollm2-135m-instruct-wanda-50-calibrated-on-c4/compressed"

    class FarModel(FakeModel):
        def facts(self):
            return replace(FACTS, path=path)

    def loader(spec, options, cancel):
        return FarModel()
        yield

    monkeypatch.chdir(tmp_path)
    app = create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=loader)
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot, app, until=lambda: app.session is not None)
        await pilot.pause()
        where = app.screen.query_one("#model-where", Static)
        shown = "".join(line.text for line in where.render_lines(where.region.reset_offset)).replace(" ", "")
        assert path.replace(" ", "") in shown
        facts = app.screen.query_one("#facts", DataTable)
        assert facts.row_count and not any("/opt/edge" in str(facts.get_row_at(row)) for row in range(facts.row_count))


@pytest.mark.asyncio
async def test_the_history_captions_of_an_empty_store_fit_80_columns(tmp_path, monkeypatch, isolated_cache):
    from textual.widgets import Label

    monkeypatch.chdir(tmp_path)
    app = create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader)
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot, app, until=lambda: app.session is not None)
        await pilot.press("5")
        await settle(pilot, app)
        await pilot.pause()
        for label in app.screen.query(Label):
            if label.display:
                text = label.render().plain if isinstance(label.render(), Text) else str(label.render())
                assert label.region.x + len(text) <= SMALL[0] and len(text) <= label.region.width, text


@pytest.mark.asyncio
async def test_columns_are_as_wide_as_their_cells_before_the_table_is_next_idle():
    # A DataTable left to size its columns measures them once idle; a frame drawn before then
    # (a busy device, a captured screen) cut every cell to its column's label.
    from textual.app import App

    from tui.widgets.fitted_table import FittedTable, add_sized, cell

    class Tables(App):
        def compose(self):
            yield FittedTable(id="fitted")
            yield DataTable(id="plain")

    app = Tables()
    async with app.run_test(size=(80, 24)):
        fitted = app.query_one("#fitted", FittedTable)
        plain = app.query_one("#plain", DataTable)
        long = "MATCHES AUDIT run 1 (magnitude-50)"
        # No pause between filling and reading: the tables have not been idle since.
        fitted.fill([("id", "id"), ("verdict", "verdict")], [("a", [cell("12"), cell(long)])], [])
        add_sized(plain, [(Text(""), "mark"), (Text("checked"), None)], [("1", [Text(""), Text("2026-01-01 10:40")])], least=[1])
        pad = 2 * fitted.cell_padding
        assert [c.get_render_width(fitted) for c in fitted.ordered_columns] == [2 + pad, len(long) + pad]
        assert [c.get_render_width(plain) for c in plain.ordered_columns] == [1 + pad, len("2026-01-01 10:40") + pad]
