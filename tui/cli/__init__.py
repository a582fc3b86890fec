"""The edge-audit command line: every action of the app, headless, with --json for scripts."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn, Sequence

from audit import __version__
from audit.errors import Cancelled, UserError
from tui.cli import common, compress, hardware, models, probe, run

# Each module adds its subcommands; adding a command is adding a module here.
COMMAND_MODULES = (models, compress, probe, hardware, run)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edge-audit",
        description="Compress a language model on this device, measure the cost, and audit its bias.",
    )
    parser.add_argument("--version", action="version", version=f"edge-audit {__version__}")
    common.add_model_options(parser)
    parser.add_argument(
        "--progress",
        choices=common.PROGRESS_STYLES,
        default="auto",
        help="progress on stderr: a bar on a terminal, none otherwise (auto), or one line per step",
    )
    parser.add_argument(
        "--store",
        dest="app_store",
        default=None,
        help="the app records its session in this results database (default: the one `edge-audit run` uses)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds like Ctrl-C does: temporary folders are removed, stores closed.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = build_parser()
    args = parser.parse_args(argv)
    common.progress_style = args.progress
    try:
        if args.command is None:
            from tui.app import run_app

            return run_app(args.model, common.load_options(args), store=args.app_store)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"edge-audit: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("edge-audit: cancelled; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
