"""Where edge-audit keeps converted models and results, and probing user-given paths without a traceback."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from audit.errors import UserError

# Plain words for the OS errors a user-given path can raise; the rest use the OS's own text.
_REASONS = {
    errno.ENAMETOOLONG: "a name in the path is longer than the file system allows",
    errno.ELOOP: "its symbolic links loop back on themselves",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "input/output error",
}
# A path longer than this is shown cut in its middle: a message stays one readable line.
SHOWN_PATH_LIMIT = 400
_SHOWN_END = 100
# The longest name (one part of a path) common file systems allow, in bytes.
_NAME_MAX = 255


def cache_dir() -> Path:
    """Root of the model cache: $EDGE_AUDIT_CACHE, else $XDG_CACHE_HOME/edge-audit, else ~/.cache/edge-audit."""
    explicit = os.environ.get("EDGE_AUDIT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edge-audit"


def models_cache_dir() -> Path:
    return cache_dir() / "models"


def data_dir() -> Path:
    """Files shipped inside the package (calibration text, held-out text, probe suites)."""
    return Path(__file__).resolve().parent / "data"


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies within it (both resolved by the caller)."""
    return path == folder or folder in path.parents


def shown(path: object, limit: int = SHOWN_PATH_LIMIT) -> str:
    """A path as a one-line message names it: bytes that are not UTF-8 (a name made on another
    system) escaped as \\xff, line breaks escaped, and a path longer than `limit` characters
    cut in its middle to its start and its end, with its length."""
    text = str(path)
    try:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:  # a lone surrogate that is no escaped byte
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    if len(text) <= limit:
        return text
    return f"{text[:_SHOWN_END]}...{text[-_SHOWN_END:]} ({len(text)} characters)"


def is_utf8_name(path: object) -> bool:
    """Whether a path's name is UTF-8 (not bytes of another system's encoding kept as surrogates)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unknown_home(text: str) -> str | None:
    """Why a path starting with ~ cannot be expanded (pathlib raises RuntimeError for it): a
    ~user who is not a user here, or ~ on an account with no home folder. None when it can."""
    if not text.startswith("~"):
        return None
    try:
        Path(text).expanduser()
    except RuntimeError:
        user = text[1:].split("/", 1)[0]
        home = f"there is no user {user!r} here" if user else "this account has no home folder"
        return f"{text}: {home}, so ~{user} names no folder"
    return None


def require_working_folder() -> None:
    """Refuse, in one line, to go on when the working folder is gone (removed after the process
    started in it): a relative path cannot be resolved then, and the inference libraries fail
    reading it with a bare 'No such file or directory' that names no path."""
    try:
        os.getcwd()
    except FileNotFoundError:
        try:
            gone = os.readlink("/proc/self/cwd").removesuffix(" (deleted)")
        except OSError:
            gone = ""
        named = f" {shown(gone)}" if gone.startswith("/") else ""
        raise UserError(f"the working folder{named} no longer exists: start edge-audit again from a folder that exists") from None
    except OSError as exc:
        raise UserError(f"cannot read the working folder: {os_reason(exc)}") from None


def _has_long_name(path: object) -> bool:
    try:
        parts = os.fsencode(os.fspath(path)).split(b"/")  # type: ignore[arg-type]
    except (TypeError, UnicodeError):
        return True
    return any(len(part) > _NAME_MAX for part in parts)


def os_reason(exc: OSError) -> str:
    """What went wrong, in a few words and without the path (the caller's message names it)."""
    if exc.errno == errno.ENAMETOOLONG and exc.filename is not None and not _has_long_name(exc.filename):
        return "the path is longer than the system allows"
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return exc.strerror or type(exc).__name__


def probe(path: Path, what: str = "path") -> os.stat_result | None:
    """The status of `path` (symbolic links followed), None when nothing is there.

    `Path.exists()` raises on a name that is too long and hides a symbolic-link loop;
    both, and a path the user may not look into, become a UserError naming `what` and the path.
    """
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):  # a link whose target is missing: say so, not "no such file"
            raise UserError(f"{what} {shown(path)} is a broken symbolic link") from None
        return None
    except OSError as exc:
        raise UserError(f"{what} {shown(path)}: {os_reason(exc)}") from None
    except ValueError:  # an embedded NUL byte
        raise UserError(f"{what} {shown(repr(path))} is not a valid path") from None


def kind(status: os.stat_result | None) -> str | None:
    """"file", "folder", "other" (a pipe, a device) or None for a missing path."""
    if status is None:
        return None
    if stat.S_ISREG(status.st_mode):
        return "file"
    if stat.S_ISDIR(status.st_mode):
        return "folder"
    return "other"


def require_file(path: Path, what: str = "file") -> os.stat_result:
    """The status of a path that must be an existing regular file, else a UserError naming it."""
    status = probe(path, what)
    found = kind(status)
    if found is None:
        raise UserError(f"{what} {shown(path)} does not exist")
    if found == "folder":
        raise UserError(f"{what} {shown(path)} is a folder, not a file")
    if found != "file":
        raise UserError(f"{what} {shown(path)} is not a regular file")
    assert status is not None
    return status


def read_text(path: Path, what: str, *, expected: str = "") -> str:
    """The UTF-8 text of a file the user gave (a byte-order mark dropped), or a UserError naming
    `what`, the path and the problem; `expected` says what the file should have been."""
    hint = f": is it {expected}?" if expected else ""
    require_file(path, what)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {what} {shown(path)}: {os_reason(exc)}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {shown(path)} is not UTF-8 text (byte {exc.start}){hint}") from None


def list_folder(folder: Path, what: str = "folder") -> list[Path]:
    """The entries of a folder, sorted; an unreadable folder is a UserError naming it."""
    try:
        return sorted(Path(folder).iterdir())
    except OSError as exc:
        raise UserError(f"cannot list the {what} {shown(folder)}: {os_reason(exc)}") from None
