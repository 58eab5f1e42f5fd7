"""Just-in-time build and loading of the C++ DeepCABAC extension (never at import time)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

try:
    import fcntl
except ImportError:  # Windows: fall back to the age of torch's lock file
    fcntl = None

from ecqx.coding.errors import NativeBuildError

log = logging.getLogger(__name__)

EXTENSION_NAME = "ecqx_nnc_core"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("nnc_core.cpp", "binding.cpp")
MAX_JOBS = "2"
STALE_LOCK_SECONDS = 600.0

_lock = threading.Lock()
_module: ModuleType | None = None


def build_directory() -> Path:
    """Cache folder of the extension, laid out like torch's own: $TORCH_EXTENSIONS_DIR, else torch's default
    root with a python/accelerator sub-folder; one folder per torch version (binary compatibility)."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(get_default_build_root(), f"{python}_{accelerator}")
    torch_version = "".join(c if c.isalnum() else "_" for c in torch.__version__)
    return Path(root) / f"{EXTENSION_NAME}_torch{torch_version}"


def _check_compiler() -> None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise NativeBuildError(
            f"no C++ compiler found (looked for {compiler!r} on PATH; set CXX to choose another). "
            "ecqx.coding needs a C++17 compiler such as g++ or clang++ to build its codec extension once; "
            "install one (e.g. `apt-get install g++` or the Xcode command line tools) and retry, "
            "or pre-build with `python -m ecqx.coding.build` on a machine that has one."
        )


def _torch_uses_lock_file() -> bool:
    """True for torch versions whose extension builds wait while a `lock` file exists (FileBaton)."""
    from torch.utils import cpp_extension

    return hasattr(cpp_extension, "FileBaton") and not hasattr(cpp_extension, "FileLock")


@contextmanager
def _build_guard(folder: Path):
    """Serialises builds between processes with an OS lock that dies with its holder.

    Older torch versions (FileBaton) mark a running build by the mere existence of a `lock` file, which
    survives a crashed build and makes every later build wait forever. Whoever holds our OS lock is the only
    builder, so such a lock file seen while holding it is stale. Newer torch holds an OS lock on that file
    instead (its presence means nothing), so the check only applies to the old mechanism.
    """
    guard = folder / "ecqx-build.guard"
    with open(guard, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = folder / "lock"
            if _torch_uses_lock_file() and stale.exists() and (
                fcntl is not None or time.time() - stale.stat().st_mtime > STALE_LOCK_SECONDS
            ):
                raise NativeBuildError(
                    f"stale build lock {stale} left by an interrupted or failed build; "
                    "delete that file and retry"
                )
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def load_native(verbose: bool = False) -> ModuleType:
    """Builds (first call only, cached on disk) and returns the C++ extension module."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        _check_compiler()
        folder = build_directory()
        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MAX_JOBS", MAX_JOBS)
        from torch.utils.cpp_extension import load

        try:
            with _build_guard(folder):
                _module = load(
                    name=EXTENSION_NAME,
                    sources=[str(CSRC / s) for s in SOURCES],
                    # torch >= 2.10 headers need its default -std=c++20; the core itself is plain C++17
                    extra_cflags=["-O3"],
                    extra_include_paths=[str(CSRC)],
                    build_directory=str(folder),
                    verbose=verbose,
                )
        except (RuntimeError, OSError, ImportError) as exc:
            raise NativeBuildError(
                f"building the codec extension in {folder} failed: {exc}. "
                f"Run `python -m ecqx.coding.build --verbose` to see the compiler output."
            ) from exc
        return _module
