"""The edge-audit command line: every action of the app, headless, with --json for scripts."""

from __future__ import annotations

import argparse
import csv
import json
import signal
import sqlite3
import sys
from typing import NoReturn, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from audit import __version__
from audit.errors import Cancelled, UserError
from audit.paths import require_working_folder, unknown_home
from audit.threads import prepare_wait_environment
from tui.cli import common, compress, fieldcheck, hardware, models, outputs, plans, probe, run

# Each module adds its subcommands; adding a command is adding a module here.
COMMAND_MODULES = (models, compress, probe, hardware, run, plans, fieldcheck)


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
    parser.add_argument(
        "--progress",
        choices=common.PROGRESS_STYLES,
        default="auto",
        help="progress on stderr: a bar on a terminal, none otherwise (auto), or one line per step",
    )
    app = parser.add_argument_group(
        "the app (no COMMAND)", "these also apply to a command that takes them when given before it"
    )
    common.add_model_options(app, dest_prefix=common.GLOBAL_PREFIX)
    app.add_argument(
        "--store",
        dest=common.GLOBAL_PREFIX + "store",
        default=argparse.SUPPRESS,
        metavar="DB",
        help="the results database the session is recorded in (default: the one `edge-audit run` uses)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    common.mark_commands(parser)
    return parser


def describe_fault(exc: BaseException) -> str | None:
    """One line for a fault of the system or of a file (not a bug): what failed, on which file."""
    if isinstance(exc, OSError):
        what = exc.strerror or type(exc).__name__
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return common.one_line(f"{' -> '.join(names)}: {what}" if names else what)
    if isinstance(exc, sqlite3.Error):
        return common.one_line(f"results store: {exc}")
    if isinstance(exc, (UnicodeError, json.JSONDecodeError, csv.Error, tomllib.TOMLDecodeError)):
        return common.one_line(f"unreadable input: {exc}")
    if type(exc).__name__ == "SafetensorError":
        return common.one_line(f"unreadable safetensors file: {exc}")
    return None


def _values(argv: Sequence[str]) -> list[str]:
    """The values on a command line, an option's given as --name=value too."""
    return [token.split("=", 1)[1] if token.startswith("--") and "=" in token else token for token in argv]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds like Ctrl-C does: temporary folders are removed, stores closed.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    prepare_wait_environment()  # before any command loads the inference libraries
    parser = build_parser()
    args = parser.parse_args(argv)
    common.apply_global_options(parser, args)
    common.progress_style = args.progress
    try:
        # Before anything reads it: PyTorch's libraries and relative paths fail without a word on
        # a working folder that was removed.
        require_working_folder()
        if args.command is None:
            from tui.app import run_app

            return run_app(args.model, common.load_options(args), store=getattr(args, "store", None))
        outputs.check_outputs(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        return common.error(str(exc))
    except Exception as exc:  # noqa: BLE001 - the boundary: data and system faults become one line
        message = outputs.unencodable_path(args, exc) if isinstance(exc, UnicodeEncodeError) else None
        if isinstance(exc, RuntimeError):  # pathlib's "Could not determine home directory."
            message = next(filter(None, map(unknown_home, _values(sys.argv[1:] if argv is None else argv))), None)
        message = message or describe_fault(exc)
        if message is None:
            raise
        return common.error(message)
    except (KeyboardInterrupt, Cancelled):
        print("edge-audit: cancelled; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
