"""Shared fixtures. Real data lives outside the repository (see README: DUALFUSE_DATA)."""
from __future__ import annotations

import json
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


BREAST_CLASSES = ["malignant", "normal_or_benign"]


def breast_args(data_root: Path, output: Path, *extra: str) -> list[str]:
    sources = {"breast": {"format": "medmnist", "path": str(data_root / "medmnist" / "breastmnist.npz"),
                          "classes": BREAST_CLASSES}}
    return [
        "--model.name", "dcat", "--model.kwargs", json.dumps({"in_chans": 1, "embed_dim": 64, "num_heads": 4}),
        "--data.sources", json.dumps(sources), "--data.img_size", "32", "--data.normalize", "zscore",
        "--data.batch_size", "32", "--data.num_workers", "0",
        "--train.epochs", "4", "--train.lr", "2e-3", "--train.monitor", "val/auc", "--train.monitor_mode", "max",
        "--train.progress_bar", "false", "--eval.n_bootstrap", "200", "--output", str(output), *extra,
    ]
