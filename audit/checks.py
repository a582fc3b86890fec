"""Checks made before any slow work: an output can be written, and there is room for it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from audit.errors import UserError
from audit.paths import kind, os_reason, probe
from hardware.memory import MB


def _nearest_folder(path: Path, what: str) -> Path:
    """The deepest existing folder on the way to `path` (where its missing parents would be
    made); a file on the way is an error."""
    for parent in path.parents:
        try:
            if parent.is_dir():
                return parent
            if parent.exists():
                raise UserError(f"cannot write {what} {path}: {parent} is a file, not a folder")
        except OSError:
            continue
    return Path.cwd()


def _try_write(folder: Path, what: str, target: Path) -> None:
    # os.access says yes to root on a read-only mount or /proc; making a file there is the real test.
    try:
        fd, probe = tempfile.mkstemp(prefix=".edge-audit-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write {what} {target}: {folder}: {os_reason(exc)}") from None


def _check_space(folder: Path, what: str, target: Path, need_bytes: int) -> None:
    if need_bytes <= 0:
        return
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need_bytes:
        raise UserError(
            f"not enough free space for {what} {target}: needs about {need_bytes / MB:,.0f} MB, "
            f"{free / MB:,.0f} MB free on {folder}"
        )


def output_folder(out: Path, what: str, *, force: bool = False, need_bytes: int = 0) -> Path:
    """`out` can become a folder: it is not a file, it does not exist (or `force` replaces it),
    a file can be made beside it, and the disk has `need_bytes` free."""
    out = Path(out).expanduser()
    found = kind(probe(out, what))
    if found not in (None, "folder"):
        raise UserError(f"{what} {out} exists and is not a folder")
    exists = found == "folder"
    if exists and not force:
        raise UserError(f"{what} {out} already exists (use --force to replace it)")
    folder = out if exists else _nearest_folder(out, what)
    _try_write(folder, what, out)
    _check_space(folder, what, out, need_bytes)
    return out


def output_file(path: Path, what: str, *, need_bytes: int = 0) -> Path:
    """`path` can be written as a file (replacing one that is there): it is not a folder and
    its folder (or the nearest one that exists) takes a new file."""
    path = Path(path).expanduser()
    found = kind(probe(path, what))
    if found == "folder":
        raise UserError(f"{what} {path} is a folder; give a file name")
    if found is not None and not os.access(path, os.W_OK):
        raise UserError(f"cannot write {what} {path}: permission denied")
    folder = _nearest_folder(path, what)
    _try_write(folder, what, path)
    _check_space(folder, what, path, need_bytes)
    return path


def report_folder(out: Path) -> Path:
    """A report folder: made if missing, its report files replaced if it exists."""
    return output_folder(out, "report folder", force=True)
