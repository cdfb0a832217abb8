"""Shared fixtures. Real data lives outside the repository (see README: DUALFUSE_DATA)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
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


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """`tmp_path_factory.mktemp` for module-scoped fixtures, whose folders are deleted when the module
    ends. Trained runs hold checkpoints of hundreds of MB each; pytest keeps `mktemp` folders until the
    session ends, which filled a CI disk. Function-scoped `tmp_path` folders are deleted per test by
    `tmp_path_retention_policy = "failed"` (pyproject.toml)."""
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


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


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on `lock_path` (POSIX flock): one xdist worker at a time inside."""
    import fcntl

    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def trained_breast_run(data_root, tmp_path_factory) -> tuple[Path, dict]:
    """One `breast_args` DCAT run (4 epochs of BreastMNIST) per test session, shared by every xdist
    worker: the first worker to ask trains it under a file lock, the others wait and reuse it. Returns
    the run folder and what `train` returned; tests copy the folder before writing into it."""
    from dualfuse.api import train
    from dualfuse.config import parse_run_args

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: the session's common folder
    run, returned = shared / "shared_breast_run", shared / "shared_breast_run.summary.json"
    with _exclusive(shared / "shared_breast_run.lock"):
        if not returned.is_file():
            shutil.rmtree(run, ignore_errors=True)  # a run a failed worker left half-written
            summary = train(parse_run_args(breast_args(data_root, run))[0])
            if summary.get("interrupted"):  # a signal stopped it: no predictions; let the next worker retrain
                shutil.rmtree(run, ignore_errors=True)
                pytest.fail(f"the shared BreastMNIST run in {run} was interrupted before it finished (a signal such "
                            "as SIGTERM reached the test process), so it has no predictions to test with")
            returned.write_text(json.dumps(summary))
    return run, json.loads(returned.read_text())

