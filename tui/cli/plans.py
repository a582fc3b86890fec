"""`edge-audit plans`: the audit plans shipped with edge-audit, listed and shown as TOML."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.table import Table
from rich.text import Text

from audit.plans import load_preset, preset_names, preset_path, preset_summary, preset_text
from tui.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    plans = sub.add_parser("plans", help="the shipped audit plans: list them, show one as TOML")
    actions = plans.add_subparsers(dest="plans_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every shipped plan, with what it runs")
    common.add_json_option(listing)
    listing.set_defaults(func=cmd_list)
    show = actions.add_parser("show", help="print a shipped plan's TOML (save it to edit and run your own)")
    show.add_argument("name", help="a shipped plan: see `edge-audit plans list`")
    common.add_json_option(show)
    show.set_defaults(func=cmd_show)


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in preset_names():
        plan = load_preset(name, check_model=False)
        probes = plan.probes
        rows.append(
            {
                "name": name,
                "summary": preset_summary(name),
                "model": plan.model,
                "variants": len(plan.variants),
                "mode": probes.mode,
                "suites": list(probes.suites),
                "path": str(preset_path(name)),
            }
        )

    def human(d: dict[str, Any]) -> None:
        table = Table(title="Shipped plans (edge-audit run NAME)")
        for column in ("name", "variants", "mode", "what it runs"):
            table.add_column(column, overflow="fold")
        for r in d["plans"]:
            table.add_row(Text(r["name"]), str(r["variants"]), r["mode"], Text(r["summary"]))
        common.stdout.print(table)

    common.emit(args, {"plans": rows}, human)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    text = preset_text(args.name)
    if getattr(args, "json", False):
        common.emit(args, {"name": args.name, "path": str(preset_path(args.name)), "toml": text}, lambda d: None)
    else:
        sys.stdout.write(text)
    return 0
