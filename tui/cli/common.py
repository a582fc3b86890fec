"""Shared pieces of the command line: model options, progress on stderr, JSON or table output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from audit.models.aliases import DEFAULT_ALIAS
from audit.models.loader import DTYPES, LoadOptions
from audit.progress import Job, drive

T = TypeVar("T")

# Tables written to a file or a pipe (a CI log, `| less`) keep every column readable: Rich's
# 80 columns off a terminal would cut a run's summary to its first letters. COLUMNS still rules.
PIPED_WIDTH = 200


def _console(stream: Any, **options: Any) -> Console:
    piped = not (hasattr(stream, "isatty") and stream.isatty()) and "COLUMNS" not in os.environ
    return Console(width=PIPED_WIDTH if piped else None, **options)


stderr = _console(sys.stderr, stderr=True)
stdout = _console(sys.stdout)


def add_model_options(parser: argparse.ArgumentParser, *, flag: bool = True) -> None:
    """--model and the options that say how it may be loaded."""
    if flag:
        parser.add_argument(
            "--model",
            "-m",
            default=DEFAULT_ALIAS,
            help=f"alias, local folder, .gguf file, ONNX folder or hub id (default {DEFAULT_ALIAS})",
        )
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (.bin, .pt): they can run code")
    parser.add_argument("--trust-remote-code", action="store_true", help="run model code shipped with the model")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weight dtype for PyTorch models")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    parser.add_argument(
        "--max-memory-mb", type=float, default=None, help="refuse to load a model that needs more than this"
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def load_options(args: argparse.Namespace) -> LoadOptions:
    return LoadOptions(
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        dtype=args.dtype,
        threads=args.threads,
        max_memory_mb=args.max_memory_mb,
    )


PROGRESS_STYLES = ("auto", "bar", "lines", "none")
progress_style = "auto"  # set from --progress by main()


def run_job(job: Job[T], overall: str | None = None) -> T:
    """Drive a core job with progress on stderr: a bar on a terminal, nothing otherwise
    (so that a failure is the only line), or one line per step with --progress lines.

    With `overall`, events of that stage drive an overall bar and every other stage shares
    one "current step" bar, so a long run shows two bars, not one per stage."""
    style = progress_style
    if style == "auto":
        style = "bar" if stderr.is_terminal else "none"
    if style == "none":
        return drive(job)
    if style == "lines":
        last = [""]

        def log(event: Any) -> None:
            if event.message and event.message != last[0]:
                last[0] = event.message
                print(f"{event.stage}: {event.message}", file=sys.stderr, flush=True)

        return drive(job, log)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[message]}"),
    )
    with Progress(*columns, console=stderr, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(event: Any) -> None:
            key = event.stage if overall is None or event.stage == overall else "step"
            if key not in tasks:
                tasks[key] = bar.add_task(event.stage, total=event.total, message="")
            bar.update(
                tasks[key], description=event.stage, completed=event.done, total=event.total, message=event.message
            )

        return drive(job, update)


def emit(args: argparse.Namespace, data: dict[str, Any], human: Callable[[dict[str, Any]], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, default=str))
    else:
        human(data)
