"""`edge-audit record`, `keys` and `check`: signed audit records, and the field check that proves
a deployed folder is the audited model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from audit.store import default_store_path
from tui.cli import common

# The style of each step status and of each check outcome.
_STATUS_STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def register(sub: argparse._SubParsersAction) -> None:
    record = sub.add_parser("record", help="export a signed audit record of a stored run, or verify one")
    actions = record.add_subparsers(dest="record_command", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="write one variant's audit record (fingerprint, verdict, figures, check items)")
    export.add_argument("run_id", type=common.count(1), metavar="RUN_ID")
    export.add_argument("--variant", help="the variant to record (default: the run's only variant)")
    export.add_argument("--store", type=Path, default=None, help=f"results database (default {default_store_path()})")
    export.add_argument("--key", type=Path, help="sign with this private key (edge-audit.key from `edge-audit keys new`)")
    export.add_argument("--out", type=Path, required=True, help="the record file to write (JSON)")
    export.add_argument("--force", action="store_true", help="replace a record already at --out")
    export.add_argument("--check-items", type=common.count(1), default=60, help="probe items a device replays (default 60)")
    export.add_argument(
        "--max-decode-ms", type=common.finite(0.001), default=None, metavar="MS", help="decode latency limit per token a device must meet"
    )
    common.add_json_option(export)
    export.set_defaults(func=cmd_export)

    verify = actions.add_parser("verify", help="check a record's signature and show what it says, without a model")
    verify.add_argument("record", type=Path, metavar="REC.json")
    verify.add_argument("--trust", type=Path, metavar="PUB", help="the public key the record must be signed with")
    common.add_json_option(verify)
    verify.set_defaults(func=cmd_verify)

    keys = sub.add_parser("keys", help="make a signing key pair for audit records")
    key_actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = key_actions.add_parser("new", help="write DIR/edge-audit.key (private, mode 0600) and DIR/edge-audit.pub")
    new.add_argument("--out", type=Path, required=True, metavar="DIR")
    new.add_argument("--force", action="store_true", help="replace keys already in DIR")
    common.add_json_option(new)
    new.set_defaults(func=cmd_keys_new)

    check = sub.add_parser("check", help="prove a deployed model folder is the audited one, and whether it may ship")
    check.add_argument("--model", type=Path, required=True, metavar="DIR", help="the deployed model folder")
    check.add_argument("--record", type=Path, required=True, metavar="REC.json", help="the audit record from the lab")
    check.add_argument("--trust", type=Path, metavar="PUB", help="the lab's public key: the record must be signed with it")
    check.add_argument("--store", type=Path, default=None, help=f"results database the check is kept in (default {default_store_path()})")
    common.add_model_options(check, flag=False)
    common.add_json_option(check)
    check.set_defaults(func=cmd_check)


def cmd_export(args: argparse.Namespace) -> int:
    from audit.record import export_record, record_title, signer

    record = export_record(
        args.store, args.run_id, args.variant, args.out, key=args.key, check_items=args.check_items, max_decode_ms=args.max_decode_ms,
        force=args.force,
    )
    data = {
        "record": str(args.out),
        "run": args.run_id,
        "variant": record["variant"]["name"],
        "fingerprint": record["fingerprint"]["digest"],
        "gate": record["gate"]["verdict"],
        "check_items": len(record["check"]["items"]),
        "signed_by": signer(record),
    }

    def human(d: dict[str, Any]) -> None:
        signed = f"signed by key {d['signed_by']}" if d["signed_by"] else "unsigned (sign with --key)"
        common.stdout.print(
            f"wrote {d['record']}: {record_title(record)}, fingerprint {d['fingerprint'][:12]}, gate {d['gate']}, "
            f"{d['check_items']} check items, {signed}"
        )

    common.emit(args, data, human)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from audit.fieldcheck import verify_record

    data = verify_record(args.record, args.trust)

    def human(d: dict[str, Any]) -> None:
        sig = d["signature"]
        style = "green" if sig["status"] == "verified" else ("yellow" if sig["ok"] else "bold red")
        common.stdout.print(Text(("SIGNATURE OK: " if sig["ok"] else "SIGNATURE FAILS: ") + sig["message"], style=style))
        audit = d["audit"]
        common.stdout.print(f"record of {audit['title']}: gate {audit['gate_verdict']} ({audit['gate_plain']}), fingerprint {str(d['fingerprint'])[:12]}")
        for failure in audit["failures"]:
            common.stdout.print(f"  - {failure}")

    common.emit(args, data, human)
    return 0 if data["signature"]["ok"] else 1


def cmd_keys_new(args: argparse.Namespace) -> int:
    from audit.record import new_keys

    private, public = new_keys(args.out, force=args.force)
    data = {"private_key": str(private), "public_key": str(public)}
    common.emit(
        args,
        data,
        lambda d: common.stdout.print(
            f"wrote {d['private_key']} (private: keep it in the lab, sign with --key) and {d['public_key']} (give it to devices: --trust)"
        ),
    )
    return 0


def print_check(data: dict[str, Any]) -> None:
    """A check's steps as a table, then its one-sentence verdict."""
    table = Table(show_header=True, title=f"Field check: {data['model_path']}")
    for column in ("step", "result", "what was found"):
        table.add_column(column)
    for step in data["steps"]:
        table.add_row(step["name"], Text(step["status"].upper(), style=_STATUS_STYLES.get(step["status"], "")), step["summary"])
    common.stdout.print(table)
    common.stdout.print(Text(data["sentence"], style="bold green" if data["exit_code"] == 0 else "bold red"))
    common.stdout.print(f"took {data['seconds']:.1f} s; stored as check {data['check_id']}")


def cmd_check(args: argparse.Namespace) -> int:
    from audit.fieldcheck import check_deployment

    result = common.run_job(
        check_deployment(args.model, args.record, trust=args.trust, options=common.load_options(args), store_path=args.store), overall="check"
    )
    common.emit(args, result.to_dict(), print_check)
    return result.exit_code
