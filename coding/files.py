"""Writing files so that a failed or interrupted write never destroys the previous file.

The data goes to a temporary file in the target's own folder (same file system, so the final rename is
atomic), is flushed and fsynced, and only then renamed over the target. Until that rename the old file is
untouched; on any error, including ``KeyboardInterrupt``, the temporary file is removed and the error
re-raised.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["atomic_write", "write_bytes_atomic"]

_TEMP_ATTEMPTS = 100


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a binary handle and atomically replace ``path`` with what it wrote.

    The new file gets the mode of the file it replaces, or for a new file the usual default for files
    (0666 less the process umask). A symbolic link at ``path`` is followed: the file it points to is
    replaced and the link stays.

    Raises:
        Whatever ``write`` raises, and ``OSError`` from creating, syncing or renaming the file; the file at
        ``path`` is then exactly what it was before the call.
    """
    target = os.path.realpath(os.fspath(path))
    folder = os.path.dirname(target)
    handle, temp_path = _create_temporary(folder, os.path.basename(target))
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _copy_mode(target, temp_path)
        os.replace(temp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
    _sync_folder(folder)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace the file at ``path`` with ``data`` (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(data))


def _create_temporary(folder: str, name: str) -> tuple[BinaryIO, str]:
    # os.open with mode 0o666 (not tempfile.mkstemp, which always uses 0o600) lets the kernel apply the
    # umask, without the process-wide and thread-unsafe os.umask() query.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_ATTEMPTS):
        temp_path = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            descriptor = os.open(temp_path, flags, 0o666)
        except FileExistsError:
            continue
        try:
            return os.fdopen(descriptor, "wb"), temp_path
        except BaseException:
            os.close(descriptor)
            os.unlink(temp_path)
            raise
    raise FileExistsError(f"could not create a temporary file next to {os.path.join(folder, name)}")


def _copy_mode(target: str, temp_path: str) -> None:
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return  # a new file: its mode is the umask-based one from os.open
    os.chmod(temp_path, mode)


def _sync_folder(folder: str) -> None:
    """Make the rename durable; not every system can open or sync a folder (Windows), which is fine."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
