"""Shared pieces of the command line: model options, progress on stderr, JSON or table output."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from audit import jsonout
from audit.models.aliases import DEFAULT_ALIAS
from audit.models.loader import DTYPES, LoadOptions
from audit.progress import Job, StallWatch, drive

T = TypeVar("T")

# Tables written to a file or a pipe (a CI log, `| less`) keep every column readable: Rich's
# 80 columns off a terminal would cut a run's summary to its first letters. COLUMNS still rules.
PIPED_WIDTH = 200


def _console(stream: Any, **options: Any) -> Console:
    piped = not (hasattr(stream, "isatty") and stream.isatty()) and "COLUMNS" not in os.environ
    return Console(width=PIPED_WIDTH if piped else None, **options)


# No console markup: names, paths and item text come from data and print as they are;
# styled output is built from rich Text.
stderr = _console(sys.stderr, stderr=True, markup=False)
stdout = _console(sys.stdout, markup=False)


def count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum` (and at most `maximum`, when
    given), refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, not {value}")
        return value

    return parse


def finite(minimum: float) -> Callable[[str], float]:
    """An argparse type: a finite number of at least `minimum` (nan and inf refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a number, not {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a number of at least {minimum:g}, not {text}")
        return value

    return parse


def megabytes(text: str) -> float:
    """An argparse type: a positive, finite number of MB."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number of MB, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of MB, not {text}")
    return value


# The model options, defined once. Commands that load a model take them after their name; the
# app takes them alone, and any of them may come before a command that takes it
# (`edge-audit --threads 1 probe`). Defaults are filled in by `apply_global_options`, so that a
# value given before the command is never overwritten by the command's default.
MODEL_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "model": (
        ("--model", "-m"),
        {"help": f"alias, local folder, .gguf file, ONNX folder or hub id (default {DEFAULT_ALIAS})"},
    ),
    "allow_pickle": (
        ("--allow-pickle",),
        {"action": "store_true", "help": "allow pickle checkpoints (.bin, .pt): they can run code"},
    ),
    "trust_remote_code": (
        ("--trust-remote-code",),
        {"action": "store_true", "help": "run model code shipped with the model"},
    ),
    "dtype": (("--dtype",), {"choices": DTYPES, "help": "weight dtype for PyTorch models (default float32)"}),
    "threads": (("--threads",), {"type": count(1), "help": "CPU threads for inference (default: the cores other processes leave free)"}),
    "max_memory_mb": (
        ("--max-memory-mb",),
        {"type": megabytes, "help": "refuse to load a model that needs more than this many MB"},
    ),
}
MODEL_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_ALIAS,
    "allow_pickle": False,
    "trust_remote_code": False,
    "dtype": "float32",
    "threads": None,
    "max_memory_mb": None,
}
GLOBAL_PREFIX = "global_"


def add_model_options(parser: argparse.ArgumentParser | Any, *, flag: bool = True, dest_prefix: str = "") -> None:
    """--model (unless the command names its model as an argument) and the options that say
    how it may be loaded."""
    for dest, (flags, options) in MODEL_OPTIONS.items():
        if dest == "model" and not flag:
            continue
        if options.get("action") != "store_true" and "choices" not in options:
            options = {**options, "metavar": dest.upper()}
        parser.add_argument(*flags, dest=dest_prefix + dest, default=argparse.SUPPRESS, **options)


def _flag(parser: argparse.ArgumentParser, dest: str) -> str:
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return action.option_strings[0]
    return "--" + dest.replace("_", "-")


def _default(parser: argparse.ArgumentParser, dest: str) -> Any:
    for action in parser._actions:
        if action.dest == dest:
            return action.default
    return None


def mark_commands(parser: argparse.ArgumentParser) -> None:
    """Each command's parser records itself in the parsed arguments, so that the options
    given before it can be checked against the ones it takes."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.set_defaults(command_parser=child, required_before=_required_model_options(child))
                mark_commands(child)


def _required_model_options(command: argparse.ArgumentParser) -> list[str]:
    """The model options `command` requires (check's --model DIR). argparse would refuse one
    given before the command as missing, so it is required by `apply_global_options` instead,
    once the options before the command are applied."""
    required = []
    for action in command._actions:
        if action.required and action.option_strings and action.dest in MODEL_OPTIONS:
            action.required = False
            action.default = argparse.SUPPRESS
            required.append(action.dest)
    return required


def apply_global_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options given before the command apply to it when it takes them; otherwise the
    command is refused, naming the option, before any work. Then the defaults fill in."""
    command = getattr(args, "command_parser", None)
    taken = {action.dest for action in command._actions} if command is not None else set(MODEL_OPTIONS) | {"store"}
    for name in list(vars(args)):
        if not name.startswith(GLOBAL_PREFIX):
            continue
        dest, value = name[len(GLOBAL_PREFIX):], getattr(args, name)
        delattr(args, name)
        flag = _flag(parser, name)
        if dest not in taken:
            where = "the app" if command is None else f"`{command.prog}`"
            parser.error(f"{flag} does not apply to {where}; see `{command.prog if command else 'edge-audit'} --help`")
        value = _as_command_takes(command, dest, value)
        after = getattr(args, dest, argparse.SUPPRESS)
        if command is not None and after not in (argparse.SUPPRESS, value, _default(command, dest)):
            parser.error(f"{flag} is given before and after `{command.prog}` with different values; give it once, after the command")
        setattr(args, dest, value)
    missing = [_flag(command, dest) for dest in getattr(args, "required_before", ()) if not hasattr(args, dest)]
    if missing:
        command.error(f"the following arguments are required: {', '.join(missing)}")
    for dest, default in MODEL_DEFAULTS.items():
        if dest in taken and not hasattr(args, dest):
            setattr(args, dest, default)


def _as_command_takes(command: argparse.ArgumentParser | None, dest: str, value: Any) -> Any:
    """A model option given before the command, converted as the command converts its own
    (check's --model is a folder path)."""
    for action in command._actions if command is not None and dest in MODEL_OPTIONS else ():
        if action.dest == dest and isinstance(value, str) and callable(action.type):
            return action.type(value)
    return value


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
    (so that a failure is the only line), or one line per step with --progress lines. A bar or
    a log that a job has not moved for a minute says so (`StallWatch`), with the device's load.

    With `overall`, events of that stage drive an overall bar and every other stage shares
    one "current step" bar, so a long run shows two bars, not one per stage."""
    style = progress_style
    if style == "auto":
        style = "bar" if stderr.is_terminal else "none"
    if style == "none":
        return drive(job)
    if style == "lines":
        last = [""]

        def say(stage: str, notice: str) -> None:
            print(f"{stage or 'starting'}: {notice}", file=sys.stderr, flush=True)

        with StallWatch(say) as watch:

            def log(event: Any) -> None:
                watch.saw(event)
                if event.message and event.message != last[0]:
                    last[0] = event.message
                    print(f"{event.stage}: {event.message}", file=sys.stderr, flush=True)

            return drive(job, log)
    columns = (
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[message]}", markup=False),
    )
    with Progress(*columns, console=stderr, transient=True) as bar:
        tasks: dict[str, Any] = {}
        latest: list[str] = []  # the bar the latest event moved

        def say(stage: str, notice: str) -> None:
            if not latest:  # silent from its start: a bar of its own says so
                latest.append("starting")
                tasks["starting"] = bar.add_task("starting", total=None, message="")
            bar.update(tasks[latest[0]], message=notice)

        with StallWatch(say) as watch:

            def update(event: Any) -> None:
                watch.saw(event)
                key = event.stage if overall is None or event.stage == overall else "step"
                if key not in tasks:
                    tasks[key] = bar.add_task(event.stage, total=event.total, message="")
                latest[:] = [key]
                bar.update(
                    tasks[key], description=event.stage, completed=event.done, total=event.total, message=event.message
                )

            return drive(job, update)


def one_line(text: str) -> str:
    return " ".join(text.split())


def error(message: str) -> int:
    """Say an error as the command line says every one: one line on stderr; exit code 2."""
    print(f"edge-audit: error: {one_line(message)}", file=sys.stderr)
    return 2


def emit(args: argparse.Namespace, data: dict[str, Any], human: Callable[[dict[str, Any]], None]) -> None:
    if getattr(args, "json", False):
        print(jsonout.dumps(data, default=str))
    else:
        human(data)
