"""Atomic writes: build in a temporary file or folder beside the target, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Iterator

from audit.errors import UserError
from audit.paths import os_reason
from audit.progress import Job, Progress, check_cancel

# Errors writing into the temporary folder that are about the target's disk, not the caller's input.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
# What is built for a target is named `.NAME.` + tempfile's 8 characters + this, beside it.
_UNFINISHED = ".tmp"
# The folder a replaced target is moved into (as NAME) while its replacement is put in place.
_REPLACED = ".old"
# How often a writer waiting for another process to let go of a target checks again (seconds).
LOCK_POLL_S = 0.2
# A file `write_bytes` left unfinished is removed by the next write of its target once no process
# holds it and it is this old (seconds): far longer than the moment between its creation and its
# writer's lock on it.
LEFT_FILE_AGE_S = 60.0


def _prefix(target: Path) -> str:
    return f".{target.name}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cannot_write(target: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write {target}: {os_reason(exc)}")


def replaceable(path: Path, what: str) -> None:
    """Refuse, in one line naming `what` and the path, a target the rename of a finished file
    would destroy rather than replace: a pipe, a device or a socket is swapped for a regular
    file, and a symbolic link loses its target (which keeps the old content). Nothing there, or
    a regular file, may be written; a folder is left to the rename, which cannot replace it."""
    try:
        status = os.lstat(path)
    except (OSError, ValueError):
        return  # nothing there, or a path the write itself refuses with its reason
    if stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode):
        return
    found = (
        "a symbolic link" if stat.S_ISLNK(status.st_mode)
        else "a named pipe" if stat.S_ISFIFO(status.st_mode)
        else "a device" if stat.S_ISCHR(status.st_mode) or stat.S_ISBLK(status.st_mode)
        else "a socket or other special file"
    )
    raise UserError(f"{what} {path} is {found}, not a regular file: writing it would replace it; choose another file")


def write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `path` at once or not at all; `mode` (e.g. 0o600 for a private key)
    is set before the file appears under its name. A target that is not a regular file is
    refused (`replaceable`), whichever command writes it."""
    import fcntl

    path = Path(path)
    replaceable(path, "output file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=_UNFINISHED, dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        # Held until this process ends, however it ends: a file no process holds was left.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _remove_left_files(path, tmp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())  # mkstemp's files are private (0600)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise


def _remove_left_files(target: Path, own: str) -> None:
    """Remove the temporary files beside `target` that a `write_bytes` of it killed outright left:
    those no process holds, older than LEFT_FILE_AGE_S. A file another writer holds is its own."""
    import fcntl

    pattern = _left_by(target, _UNFINISHED)
    try:
        entries = [entry for entry in os.scandir(target.parent) if pattern.fullmatch(entry.name) and entry.path != own]
    except OSError:
        return
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False) or time.time() - entry.stat(follow_symlinks=False).st_mtime < LEFT_FILE_AGE_S:
                continue
            with open(entry.path, "rb") as left:
                fcntl.flock(left, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while a writer holds it
                os.unlink(entry.path)
        except OSError:
            continue


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def directory(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `target` only when the block finishes without error.

    An existing target is an error unless `force`; then it is replaced only after the new
    folder is complete, so a failure or Ctrl-C leaves the old one as it was.
    """
    target = Path(target)
    if _lexists(target) and not force:
        raise UserError(f"output folder {target} already exists (use --force to replace it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=_UNFINISHED, dir=target.parent))
        # mkdtemp makes the folder private (0700); the finished folder gets the usual mode.
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # A full or read-only disk is the user's to fix; other errors in the block are the caller's.
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            raise _cannot_write(target, exc) from None
        raise
    try:
        _put_in_place(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _cannot_write(target, exc) from None
        raise


def remove_unfinished(target: Path) -> None:
    """Remove what `write_bytes` or `directory` was building for `target` when its process was
    killed (a temporary file or folder beside it), and what a replacement of `target` left: the
    replaced target comes back if its replacement never took its place, else it is removed. Only
    for a target no live process writes (hold its `writer_lock`)."""
    target = Path(target)
    try:
        entries = list(os.scandir(target.parent))
    except OSError:  # no folder: nothing was built in it
        return
    replaced, unfinished = _left_by(target, _REPLACED), _left_by(target, _UNFINISHED)
    for entry in entries:
        if replaced.fullmatch(entry.name):
            kept = Path(entry.path) / target.name  # there only between the two renames of a replacement
            if not _lexists(target) and _lexists(kept):
                try:
                    os.replace(kept, target)
                except OSError as exc:  # kept, not lost
                    raise _cannot_write(target, exc) from None
            _remove(entry)
        elif unfinished.fullmatch(entry.name):
            _remove(entry)


def tidy(target: Path) -> None:
    """`remove_unfinished` for a target that may be in use: only when something was left beside
    it and no process writes it now. Where nothing can be written (a read-only cache), nothing
    is done: a reader of a finished target need not be able to tidy it."""
    target = Path(target)
    try:
        names = [entry.name for entry in os.scandir(target.parent)]
    except OSError:
        return
    patterns = (_left_by(target, _REPLACED), _left_by(target, _UNFINISHED))
    if not any(p.fullmatch(name) for name in names for p in patterns):
        return
    try:
        lock = writer_lock(target)
        if lock is not None:
            with lock:
                remove_unfinished(target)
    except UserError:
        return


def _left_by(target: Path, suffix: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(_prefix(target))}[a-z0-9_]{{8}}{re.escape(suffix)}")


def _remove(entry: os.DirEntry) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


def writer_lock(target: Path) -> IO[str] | None:
    """The lock a process holds while it writes `target` (a file beside it, `.NAME.lock`), taken
    when no other process holds it: the open lock file, which releases it when closed (the system
    releases it too when its holder ends, however it ends); None while another process holds it."""
    import fcntl

    target = Path(target)
    path = _lock_path(target)
    while True:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            lock = open(path, "a")
        except OSError as exc:
            raise _cannot_write(target, exc) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        try:
            if _same_file(lock, path):
                return lock
        except BaseException:
            lock.close()
            raise
        lock.close()  # its holder removed the lock file as it let go (`sole_writer`): take the new one


def writer_lock_when_free(target: Path, stage: str, waiting: str, cancel: threading.Event | None = None) -> Job[IO[str]]:
    """`writer_lock` of `target`, once no other process holds it. Until then it says `waiting`
    once (as a step of `stage`) and checks for a cancel between looks."""
    said = False
    while (lock := writer_lock(target)) is None:
        if not said:
            said = True
            yield Progress(stage, 0, None, waiting)
        check_cancel(cancel)
        time.sleep(LOCK_POLL_S)
    return lock


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    opened = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


@contextlib.contextmanager
def sole_writer(target: Path, what: str = "output folder") -> Iterator[None]:
    """Hold `target`'s `writer_lock` while the block writes it, first removing what a writer
    killed midway left (`remove_unfinished`); the lock file goes when the block ends. While
    another process writes it, a UserError."""
    target = Path(target)
    lock = writer_lock(target)
    if lock is None:
        raise UserError(f"{what} {target} is being written by another process; wait until it has ended, or choose another folder")
    with lock:
        try:
            remove_unfinished(target)
            yield
        finally:
            # Removed while held, so that nothing is left beside the output: a process that
            # opened it meanwhile finds it gone once it holds it, and takes a new one.
            with contextlib.suppress(OSError):
                os.unlink(_lock_path(target))


def is_locked(target: Path) -> bool:
    """Whether a process (this one too) holds `target`'s `writer_lock` now. Creates nothing; the
    question takes a shared lock for an instant, in which `writer_lock` would find it held."""
    import fcntl

    try:
        lock = open(_lock_path(Path(target)))
    except OSError:  # never locked, or not readable here: no holder to be seen
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _lexists(path: Path) -> bool:
    """Whether anything, even a broken link, is at `path`; a path that cannot be looked at is a UserError."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    return True


def _put_in_place(tmp: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=_REPLACED, dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old / target.name, target)  # the old target back, as the block promised
        os.rmdir(old)
        raise
    # Renamed before it is deleted, so that `old` holds NAME only while it is the whole old target.
    os.replace(old / target.name, old / f"{target.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
