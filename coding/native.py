"""Just-in-time build and loading of the C++ DeepCABAC extension (never at import time).

Each build lives in its own folder, named after a hash of the extension's sources and of the toolchain that
compiles them (:func:`source_key`). Checkouts and environments with the same sources and toolchain therefore
share one build, and different sources never overwrite each other's. A folder whose build has finished is
loaded directly, without asking torch (and so ninja, and the compiler) again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
# torch >= 2.10 headers need its default -std=c++20; the core itself is plain C++17
EXTRA_CFLAGS = ("-O3",)
MAX_JOBS = "2"
STALE_LOCK_SECONDS = 600.0
KEY_HEX_DIGITS = 16
# written last, after torch has built and imported the module: its presence means the folder is complete
BUILT_MARKER = "ecqx-build.json"
LIBRARY = EXTENSION_NAME + (".pyd" if sys.platform == "win32" else ".so")
# hidden files, editor backups and swap files in csrc are not sources and must not change the key
_NOT_SOURCE = re.compile(r"^[.#]|~$|\.(swp|swo|swx|bak|orig|rej|tmp)$")
_CUDA_NOTICE = "No CUDA runtime is found"

_lock = threading.Lock()
_module: ModuleType | None = None


def source_files(csrc: Path = CSRC) -> list[Path]:
    """Every file of the extension's source folder (sub-folders included), in sorted relative-path order."""
    files = [
        p for p in csrc.rglob("*")
        if p.is_file() and not any(_NOT_SOURCE.search(part) for part in p.relative_to(csrc).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(csrc).as_posix())


def compiled_sources(csrc: Path = CSRC) -> list[Path]:
    """The translation units torch compiles: every ``*.cpp`` directly in ``csrc``, sorted by name."""
    return [p for p in source_files(csrc) if p.parent == csrc and p.suffix == ".cpp"]


def source_key(csrc: Path, toolchain: Mapping[str, str]) -> str:
    """Hex digest of the source files' names and bytes and of the toolchain description.

    Only contents count (not modification times): a fresh checkout of the same sources maps to the same key.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(toolchain.items())).encode())
    for path in source_files(csrc):
        data = path.read_bytes()
        # name and length delimit each file, so moving bytes from one file to the next changes the key
        digest.update(f"\0{path.relative_to(csrc).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:KEY_HEX_DIGITS]


@functools.cache
def _compiler_identity(compiler: str) -> str:
    """Resolved path and first ``--version`` line of the C++ compiler (once per process: a subprocess)."""
    path = shutil.which(compiler)
    if path is None:
        return f"{compiler} (not found)"
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        lines = (result.stdout or result.stderr).strip().splitlines()
        version = lines[0] if lines else "(no version)"
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"(--version failed: {exc.__class__.__name__})"
    return f"{os.path.realpath(path)}: {version}"


def toolchain() -> dict[str, str]:
    """What besides the sources decides the compiled binary: torch, Python ABI, compiler, flags, platform."""
    import torch

    python = f"{platform.python_implementation()} {platform.python_version()}{getattr(sys, 'abiflags', '')}"
    return {
        "torch": torch.__version__,
        "torch_cuda": str(torch.version.cuda),
        "cxx11_abi": str(torch.compiled_with_cxx11_abi()),
        "python": python,
        "ext_suffix": str(sysconfig.get_config_var("EXT_SUFFIX")),
        "compiler": _compiler_identity(os.environ.get("CXX", "c++")),
        "cflags": " ".join(EXTRA_CFLAGS),
        "platform": f"{platform.system()} {platform.machine()}",
    }


class _DropCudaNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CUDA_NOTICE)


class _DropCudaNoticeStream:
    """Forwards writes to a stream except the CUDA notice and the line break ``print`` sends after it."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._after_notice = False

    def write(self, text: str) -> int:
        if text.startswith(_CUDA_NOTICE):
            self._after_notice = True
            return len(text)
        if self._after_notice and text == "\n":
            self._after_notice = False
            return len(text)
        self._after_notice = False
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextmanager
def _without_cuda_notice() -> Iterator[None]:
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." notice, which the import of
    ``torch.utils.cpp_extension`` emits on machines with a CUDA toolkit but no GPU: we build CPU code only,
    so it misleads. Newer torch logs it (filtered on that logger), older torch prints it to stderr."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    notice_filter = _DropCudaNotice()
    logger.addFilter(notice_filter)
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _DropCudaNoticeStream(stdout), _DropCudaNoticeStream(stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        logger.removeFilter(notice_filter)


def _cpp_extension() -> ModuleType:
    """``torch.utils.cpp_extension``, imported without its CUDA notice."""
    module = sys.modules.get("torch.utils.cpp_extension")
    if module is None:
        with _without_cuda_notice():
            from torch.utils import cpp_extension as module
    return module


def build_root() -> Path:
    """$TORCH_EXTENSIONS_DIR, else torch's default root for extension builds (user-specific)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(root if root else _cpp_extension().get_default_build_root())


def build_directory() -> Path:
    """Build folder of the extension for the installed sources and the current toolchain."""
    return build_root() / f"{EXTENSION_NAME}_{source_key(CSRC, toolchain())}"


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
    cpp_extension = _cpp_extension()
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


def is_built(folder: Path) -> bool:
    """Whether ``folder`` holds a finished build (library and marker; the marker is written last)."""
    return (folder / BUILT_MARKER).is_file() and (folder / LIBRARY).is_file()


def _mark_built(folder: Path, description: Mapping[str, str]) -> None:
    partial = folder / f"{BUILT_MARKER}.{os.getpid()}.tmp"
    partial.write_text(json.dumps(dict(description), indent=1) + "\n")
    os.replace(partial, folder / BUILT_MARKER)


def _ensure_built(folder: Path, build: Callable[[Path], ModuleType]) -> ModuleType | None:
    """Runs ``build(folder)`` under the build guard unless the folder holds a finished build; returns its
    module, or None when no build was needed (also when another process finished one while we waited)."""
    if is_built(folder):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    with _build_guard(folder):
        if is_built(folder):
            log.debug("the codec extension in %s was built by another process meanwhile", folder)
            return None
        message = f"ecqx: building the NNC coder (once, ~1 min) in {folder}..."
        log.info(message)
        # a user-facing progress line, shown whatever the logging setup: the command seems stuck otherwise
        print(message, file=sys.stderr, flush=True)
        return build(folder)


def _torch_build(verbose: bool) -> Callable[[Path], ModuleType]:
    def build(folder: Path) -> ModuleType:
        os.environ.setdefault("MAX_JOBS", MAX_JOBS)
        module = _cpp_extension().load(
            name=EXTENSION_NAME,
            sources=[str(p) for p in compiled_sources(CSRC)],
            extra_cflags=list(EXTRA_CFLAGS),
            extra_include_paths=[str(CSRC)],
            build_directory=str(folder),
            verbose=verbose,
        )
        _mark_built(folder, toolchain())
        return module

    return build


def _import_built(folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(EXTENSION_NAME, folder / LIBRARY)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {folder / LIBRARY}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_native(verbose: bool = False) -> ModuleType:
    """Builds (first call only, cached on disk) and returns the C++ extension module."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        import torch  # noqa: F401  (the extension links against torch's libraries, which must be loaded)

        folder = build_directory()
        if not is_built(folder):
            _check_compiler()  # before announcing a build, and only when one is needed
        try:
            module = _ensure_built(folder, _torch_build(verbose))
        except NativeBuildError:
            raise
        except (RuntimeError, OSError, ImportError) as exc:
            raise NativeBuildError(
                f"building the codec extension in {folder} failed: {exc}. "
                f"Run `python -m ecqx.coding.build --verbose` to see the compiler output."
            ) from exc
        if module is None:
            try:
                module = _import_built(folder)
            except (OSError, ImportError) as exc:
                raise NativeBuildError(
                    f"loading the built codec extension {folder / LIBRARY} failed: {exc}. "
                    f"Delete {folder} and retry to rebuild it."
                ) from exc
        _module = module
        return _module
