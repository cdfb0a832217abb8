"""Where real data lives for an installed package: `DUALFUSE_DATA`, else `./data`."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "data_root"]

DATA_ENV = "DUALFUSE_DATA"


def data_root() -> Path:
    """The data folder: env `DUALFUSE_DATA`, else `./data` under the current directory."""
    configured = os.environ.get(DATA_ENV)
    root = Path(configured) if configured else Path.cwd() / "data"
    if not root.is_dir():
        source = f"${DATA_ENV}" if configured else f"default ./data (set ${DATA_ENV} to choose another)"
        raise FileNotFoundError(f"data folder not found: {root} ({source})")
    return root
