"""Durable file writes shared by every layer: a reader sees the old file or the new one, never half.

The bottom of the package (stdlib only): the data layer, the models, training checkpoints, reports
and the API all write through here, so no layer needs to import a higher one to write safely.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike

__all__ = ["PathLike", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "remove_stale_temporaries"]

TEMPORARY_SUFFIX = ".tmp"




def atomic_write(path: PathLike, write_fn: Callable[[Path], None]) -> None:
    """Write a file via `write_fn(temporary_path)` so readers see the old file or the new one, never half.

    The temporary file lives in the target's directory (a rename is only atomic within one filesystem);
    it is fsynced before the rename and the directory after it, so the new file survives a power cut.
    On any exception, KeyboardInterrupt included, the temporary file is removed and the target untouched.
    Local filesystems only.
    """
    target = Path(os.fspath(path))
    if "://" in str(path):
        raise ValueError(f"{path}: atomic writes need a local path, not a URL")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(target)
    try:
        write_fn(temporary)
        _fsync_path(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def atomic_write_bytes(path: PathLike, data: bytes | bytearray | memoryview) -> None:
    """`atomic_write` for data already in memory."""
    atomic_write(path, lambda temporary: _write_bytes(temporary, data))


def _create_temporary(target: Path) -> Path:
    # A hidden, random name beside the target; created with mode 0o666 so the umask applies as it
    # would to a plain open() (mkstemp's 0o600 would leave checkpoints unreadable to the group).
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temporary


def _write_bytes(path: Path, data: bytes | bytearray | memoryview) -> None:
    with open(path, "wb") as file:
        file.write(data)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable. Windows cannot open a directory; its rename is journaled anyway.
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: PathLike, text: str) -> None:
    """`atomic_write` for text, UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, payload: Any) -> None:
    """`payload` as indented JSON (numpy scalars become floats), written atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=float) + "\n")


def remove_stale_temporaries(directory: PathLike) -> list[Path]:
    """Delete the hidden `.<name>.<hex>.tmp` files an interrupted atomic write left in `directory`.

    A write killed between creating its temporary file and the rename (power cut, SIGKILL) cannot
    clean up after itself; the next run in the same folder does. Returns the files removed.
    """
    directory = Path(os.fspath(directory))
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.glob(".*" + TEMPORARY_SUFFIX):
        if _is_temporary_name(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _is_temporary_name(name: str) -> bool:
    # ".<target>.<12 hex>.tmp", as `_create_temporary` makes them
    parts = name[1:-len(TEMPORARY_SUFFIX)].rsplit(".", 1)
    return name.startswith(".") and len(parts) == 2 and len(parts[1]) == 12 and all(
        c in "0123456789abcdef" for c in parts[1])
