"""Shared fixtures. Real data lives outside the repository (see README: DUALFUSE_DATA)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("DUALFUSE_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real-data folder; in CI (CI set) a missing folder fails the test instead of skipping it."""
    root = _data_root()
    if not root.is_dir():
        message = f"real data folder not found: {root} (set DUALFUSE_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
