"""The software side of the device: OS, kernel, Python, torch and ONNX Runtime with their threads and providers."""

from __future__ import annotations

import importlib
import platform
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from hardware.sysfs import RootLike, SYSTEM_ROOT, is_system_root, read_key_values, read_text


@dataclass(frozen=True)
class OsInfo:
    name: str | None  # PRETTY_NAME of /etc/os-release
    kernel: str | None
    hostname: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_os(root: RootLike = SYSTEM_ROOT) -> OsInfo:
    release = read_key_values(root, "/etc/os-release", sep="=")
    name = release.get("PRETTY_NAME") or release.get("NAME")
    kernel = read_text(root, "/proc/sys/kernel/osrelease")
    hostname = read_text(root, "/proc/sys/kernel/hostname")
    if is_system_root(root):
        kernel = kernel or platform.release() or None
        hostname = hostname or platform.node() or None
    return OsInfo(name=name.strip('"') if name else None, kernel=kernel, hostname=hostname)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class RuntimeInfo:
    python: str
    torch: str | None
    torch_threads: int | None  # intra-op threads torch uses now
    torch_interop_threads: int | None
    onnxruntime: str | None
    onnxruntime_providers: tuple[str, ...]
    transformers: str | None
    optimum_onnx: str | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["onnxruntime_providers"] = list(self.onnxruntime_providers)
        return data


def _library(name: str, import_it: bool) -> Any:
    """The module `name` if this process has imported it, or (with `import_it`) can import
    it; None otherwise, a broken install included."""
    if name in sys.modules or not import_it or not package_version(name):
        return sys.modules.get(name)
    try:
        return importlib.import_module(name)
    except Exception:  # a broken install reports what it can
        return None


def read_runtime(import_libraries: bool = True) -> RuntimeInfo:
    """Versions of the inference libraries, and their threads and providers in this process.

    Importing torch and ONNX Runtime takes seconds; with `import_libraries` False, threads and
    providers are read only from libraries this process has imported already."""
    torch = _library("torch", import_libraries)
    onnxruntime = _library("onnxruntime", import_libraries)
    return RuntimeInfo(
        python=platform.python_version(),
        torch=package_version("torch"),
        torch_threads=torch.get_num_threads() if torch else None,
        torch_interop_threads=torch.get_num_interop_threads() if torch else None,
        onnxruntime=package_version("onnxruntime"),
        onnxruntime_providers=tuple(onnxruntime.get_available_providers()) if onnxruntime else (),
        transformers=package_version("transformers"),
        optimum_onnx=package_version("optimum-onnx"),
    )
