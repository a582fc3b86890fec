"""What each command writes, checked before any work: never over one of its inputs, never a pipe, device or link."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from audit.atomic import replaceable
from audit.errors import UserError
from audit.models.aliases import ALIASES
from audit.paths import inside, is_utf8_name, probe, shown, unknown_home
from audit.store import default_store_path

# The files `write_report` writes into a report folder.
REPORT_FILES = ("report.md", "report.html", "report.json")
# An output of a command: the option that names it, and the file written.
Output = tuple[str, Path]
# An input of a command: the option that names it, and the file or folder read.
Input = tuple[str, Path]


def suite_path(spec: str) -> Path | None:
    """The file a suite given as `spec` is read from, as `load_suite` reads it; None for a suite
    of no file, or a path under a ~user who is not a user here (the suite's reader says so)."""
    _, _, path = spec.partition(":")
    path = path.strip()
    if not path or unknown_home(path):
        return None
    return Path(path).expanduser()


def model_paths(spec: str | Path | None) -> list[Path]:
    """The files and folders a model given as `spec` is read from here: its folder or file, the
    converted folder of a .gguf in the cache, an alias's converted folder. A hub id's are the
    hub cache's own, and nothing edge-audit writes goes there."""
    if spec is None:
        return []
    spec = str(spec)
    if spec in ALIASES:
        from audit.paths import models_cache_dir

        return [models_cache_dir() / spec]
    if unknown_home(spec):
        return []  # loading it says what is wrong with it
    path = Path(spec).expanduser()
    try:
        found = probe(path, "model")
    except UserError:
        return []  # loading it says what is wrong with it
    if found is None:
        return []
    paths = [path]
    if path.suffix.lower() == ".gguf":
        from audit.models.loader import cache_entry_for_gguf

        paths.append(cache_entry_for_gguf(path, None))
    return paths


def _report_files(option: str, folder: Path | None) -> list[Output]:
    if folder is None:
        return []
    return [(option, Path(folder) / name) for name in REPORT_FILES]


def _probe(args: argparse.Namespace) -> tuple[list[Output], list[Input]]:
    outputs = [("--items-out", args.items_out)] if args.items_out is not None else []
    inputs = [("--suite", suite_path(args.suite)), ("--bbq-metadata", args.bbq_metadata), ("--gate", args.gate),
              ("--baseline-items", args.baseline_items)]
    return outputs, inputs + [("--model", p) for p in model_paths(args.model)]


def _run(args: argparse.Namespace) -> tuple[list[Output], list[Input]]:
    plan = Path(args.plan) if args.plan else None
    inputs = [("the plan", plan), ("--store", args.store or default_store_path())]
    inputs += [("--suite", suite_path(spec)) for spec in args.suite]
    inputs += [("--model", p) for p in model_paths(args.model)]
    return _report_files("--report", args.report), inputs


def _runs_report(args: argparse.Namespace) -> tuple[list[Output], list[Input]]:
    return _report_files("--out", args.out), [("--store", args.store or default_store_path())]


def _record_export(args: argparse.Namespace) -> tuple[list[Output], list[Input]]:
    return [("--out", args.out)], [("--store", args.store or default_store_path()), ("--key", args.key)]


def _keys_new(args: argparse.Namespace) -> tuple[list[Output], list[Input]]:
    from audit.record import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE

    return [("--out", Path(args.out) / PRIVATE_KEY_FILE), ("--out", Path(args.out) / PUBLIC_KEY_FILE)], []


# The output files of each command that writes any, and the inputs they must not replace.
OUTPUT_FILES: dict[str, Callable[[argparse.Namespace], tuple[list[Output], list[Input]]]] = {
    "edge-audit probe": _probe,
    "edge-audit run": _run,
    "edge-audit runs report": _runs_report,
    "edge-audit record export": _record_export,
    "edge-audit keys new": _keys_new,
}

# The options naming a folder a model is written to: its tokenizer and weights files are saved
# by libraries that take UTF-8 names only, which they find out after the work is done.
MODEL_FOLDERS = {
    "edge-audit prune": ("--out",),
    "edge-audit quantize": ("--out",),
    "edge-audit run": ("--work-dir",),
}


def _resolved(path: Path) -> Path | None:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def clashes(out: Path, inputs: Iterable[Input]) -> Iterator[str]:
    """What writing `out` would destroy among `inputs`, in words."""
    target = _resolved(out)
    if target is None:
        return
    for option, path in inputs:
        if path is None:
            continue
        source = _resolved(path)
        if source is None:
            continue
        if source == target:
            yield f"would overwrite {option} {shown(path)}"
        elif os.path.isdir(source) and inside(target, source):
            yield f"would overwrite or sit inside {option} {shown(path)}"


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, in one line naming the option, an output file that is one of the command's inputs
    (the same file by its resolved path, or a file inside an input folder such as the model's),
    or that is there and is not a regular file (a pipe, a device such as /dev/full, a link or a
    folder, which the atomic write would swap for a regular file); and a model folder with a
    name that is not UTF-8. An ordinary file already there is still replaced as the command's
    own --force rules say."""
    command = getattr(getattr(args, "command_parser", None), "prog", None)
    for option in MODEL_FOLDERS.get(command, ()):
        folder = getattr(args, option.lstrip("-").replace("-", "_"), None)
        if folder is not None and not is_utf8_name(folder):
            raise UserError(f"{option} {shown(folder)}: the name is not UTF-8 (the bad bytes shown escaped), and a model's "
                            "tokenizer and weights files can only be saved under UTF-8 names; choose another name")
    described = OUTPUT_FILES.get(command)
    if described is None:
        return
    outputs, inputs = described(args)
    for option, out in outputs:
        replaceable(out, option)
        for clash in clashes(out, inputs):
            raise UserError(f"{option} {shown(out)} {clash}; choose another file")


def unencodable_path(args: argparse.Namespace, exc: UnicodeEncodeError) -> str | None:
    """The option and path behind a UnicodeEncodeError that a name with bytes that are not
    UTF-8 raised (a library that takes UTF-8 names only), in one line; None when no option of
    the command holds the character that failed."""
    if not isinstance(exc.object, str):
        return None
    bad = exc.object[exc.start:exc.end]
    command = getattr(args, "command_parser", None)
    for action in command._actions if command is not None else ():
        value = getattr(args, action.dest, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (str, Path)) and bad and bad in str(item):
                flag = action.option_strings[0] if action.option_strings else (action.metavar or action.dest).upper()
                return (f"{flag} {shown(item)}: the name is not UTF-8 (the bad bytes shown escaped), and a file this command "
                        "reads or writes cannot be named so; choose another name")
    return None
