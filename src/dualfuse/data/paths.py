"""Where real data lives for an installed package: `DUALFUSE_DATA`, else `./data`."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "data_root", "display_path"]

DATA_ENV = "DUALFUSE_DATA"


def data_root() -> Path:
    """The data folder: env `DUALFUSE_DATA`, else `./data` under the current directory."""
    configured = os.environ.get(DATA_ENV)
    root = Path(configured) if configured else Path.cwd() / "data"
    if not root.is_dir():
        source = f"${DATA_ENV}" if configured else f"default ./data (set ${DATA_ENV} to choose another)"
        raise FileNotFoundError(f"data folder not found: {root} ({source})")
    return root


def display_path(path: str | os.PathLike) -> str:
    """A data path as reports, model cards and predictions may show it: never absolute.

    Paths can identify patients or sites. A path under the data root is shown relative to it
    (`${DUALFUSE_DATA}/medmnist/x.npz`), a `${VAR}` path as written, anything else by its last
    component only.
    """
    text = os.fspath(path)
    if text.startswith("$"):
        return text
    configured = os.environ.get(DATA_ENV)
    resolved = Path(text).expanduser()
    if configured:
        try:
            return f"${{{DATA_ENV}}}/" + resolved.resolve().relative_to(Path(configured).resolve()).as_posix()
        except (ValueError, OSError):
            pass
    return resolved.name if resolved.is_absolute() or ".." in resolved.parts else resolved.as_posix()
