"""Durable local file writes: the one implementation every file ctd keeps goes through.

``write_atomic`` replaces a file so that a reader (or a restart after a crash
at any instant) sees the previous content or the whole new one, never a part.
It fsyncs the data and, when a directory entry changes, the directory.

``crash_point`` is a test seam: it is called with a named point between the
steps ("<file>:written" after the temp file is durable, "<file>:replaced"
after the rename); crash tests set it to kill the process at one point.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def _no_crash(point: str) -> None:
    """Production value of the crash seam: named points do nothing."""


crash_point: Callable[[str], None] = _no_crash


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename, fsync
    the directory. Missing parent directories are created (and made durable)."""
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        crash_point(f"{path.name}:written")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    crash_point(f"{path.name}:replaced")
    fsync_dir(path.parent)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new entries survive a crash (each new directory's parent fsynced)."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
