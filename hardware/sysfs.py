"""Safe reads of /proc, /sys and small tools under an injectable root: None means "not available".

Every hardware reader goes through these helpers, so a missing file, a permission error, a
garbled value or a missing tool gives None (or an empty collection) and never an exception.
Tests point `root` at a fake tree written in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence, Union

RootLike = Union[str, "os.PathLike[str]"]
SYSTEM_ROOT = Path("/")
# Far above any kernel's NR_CPUS (8192 on x86-64, 4096 on arm64): a list naming more is garbled.
MAX_CPUS = 1 << 16
# The kernel writes integers of 64 bits at most; a longer one is garbled, and too large for a float.
_KERNEL_INT_RANGE = range(-(1 << 63), 1 << 64)


def under(root: RootLike, path: str) -> Path:
    """`path` (absolute, as on the device) inside `root`."""
    return Path(root) / path.lstrip("/")


def is_system_root(root: RootLike) -> bool:
    """Whether `root` is this machine's own root, where psutil and the live process apply."""
    try:
        return Path(root).resolve() == SYSTEM_ROOT
    except OSError:
        return False


def read_text(root: RootLike, path: str) -> str | None:
    """A file's text with surrounding whitespace and device-tree NULs stripped; None if unreadable."""
    try:
        raw = under(root, path).read_bytes()
    except (OSError, ValueError):
        return None
    return raw.decode("utf-8", errors="replace").strip().strip("\x00").strip()


def parse_int(token: str, base: int = 10) -> int | None:
    """An integer as the kernel writes one (64 bits at most); None if it is not one."""
    try:
        value = int(token, base)
    except ValueError:  # not a number, or more digits than Python converts
        return None
    return value if value in _KERNEL_INT_RANGE else None


def read_int(root: RootLike, path: str, base: int = 10) -> int | None:
    text = read_text(root, path)
    return parse_int(text.split()[0], base) if text else None


def read_float(root: RootLike, path: str) -> float | None:
    text = read_text(root, path)
    if text is None:
        return None
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def read_key_values(root: RootLike, path: str, sep: str = ":") -> dict[str, str]:
    """`key<sep>value` lines (as in /proc/meminfo, /proc/cpuinfo's first block); {} if unreadable."""
    text = read_text(root, path)
    result: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, found, value = line.partition(sep)
        if found and key.strip() and key.strip() not in result:
            result[key.strip()] = value.strip()
    return result


def glob(root: RootLike, pattern: str) -> list[Path]:
    """Paths matching an absolute device pattern inside `root`, sorted naturally (zone2 < zone10)."""
    try:
        found = list(Path(root).glob(pattern.lstrip("/")))
    except (OSError, ValueError):
        return []
    return sorted(found, key=lambda p: natural_key(str(p)))


def natural_key(text: str) -> tuple[object, ...]:
    parts: list[object] = []
    digits = ""
    word = ""
    for char in text:
        if char in "0123456789":  # not str.isdigit, which takes "²" that int() refuses
            if word:
                parts.append(word)
                word = ""
            digits += char
        else:
            if digits:
                parts.append(int(digits))
                digits = ""
            word += char
    if digits:
        parts.append(int(digits))
    if word:
        parts.append(word)
    # Mixed int/str parts compare by position only when both sides have the same kind.
    return tuple((0, p) if isinstance(p, int) else (1, p) for p in parts)


def read_path_text(path: Path) -> str | None:
    """Like `read_text` for a path already inside the root (from `glob`)."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace").strip().strip("\x00").strip()
    except (OSError, ValueError):
        return None


def read_path_int(path: Path) -> int | None:
    text = read_path_text(path)
    return parse_int(text.split()[0]) if text else None


def parse_cpu_list(text: str | None) -> list[int]:
    """A kernel CPU list such as "0-3,6" as [0, 1, 2, 3, 6]; [] if garbled."""
    cpus: set[int] = set()
    for part in (text or "").strip().split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            return []
        if low < 0 or high < low or high >= MAX_CPUS:
            return []
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def run_tool(argv: Sequence[str], timeout_s: float = 2.0) -> str | None:
    """Stdout of a small tool found on PATH; None when it is missing, fails or hangs."""
    executable = shutil.which(argv[0])
    if executable is None:
        return None
    try:
        done = subprocess.run(
            [executable, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout

