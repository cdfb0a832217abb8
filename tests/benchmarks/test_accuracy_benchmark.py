"""The accuracy benchmark end to end on one tiny real row: its record says what the model saw, a second
call resumes instead of retraining, and a spent budget starts nothing new."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.test_make_docs import _load

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.realdata
def test_tiny_breastmnist_row_records_resumes_and_keeps_to_its_budget(data_root, monkeypatch, tmp_path, capsys):
    bench = _load("accuracy")
    monkeypatch.setenv("DUALFUSE_DATA", str(data_root))
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "accuracy_cpu.json"
    argv = ["--rows", "breastmnist-resnet18", "--seeds", "0", "--threads", "1", "--mc-samples", "2",
            "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
            "--set", "data.max_train_cases=40", "train.epochs=1", "eval.n_bootstrap=50"]
    assert bench.main(argv) == 0
    (record,) = _load("_common").read_json(out, None)["records"]
    assert (record["row"], record["seed"], record["device"], record["mc_samples"]) == ("breastmnist-resnet18", 0, "cpu", 2)
    assert record["source_px"] == {"breastmnist": 28} and record["max_train_cases"] == 40
    assert (record["img_size"], record["epochs_trained"], record["weights"]) == (32, 1, "scratch")
    (task,) = record["tasks"].values()
    assert task["dataset"] == "breastmnist" and task["n_test"] == 156
    assert task["auc"]["ci_low"] <= task["auc"]["value"] <= task["auc"]["ci_high"]
    assert len(task["per_case"]["label"]) == 156 and all(abs(sum(p) - 1) < 1e-4 for p in task["per_case"]["probs"])
    assert "--data.max_train_cases 40" in record["train_command"]

    capsys.readouterr()
    # seed 0 is held with the same command: skipped; seed 1 would be new, but the budget is spent
    assert bench.main(argv[:3] + ["0", "1", "--budget-s", "0"] + argv[4:]) == 0
    printed = capsys.readouterr().out
    assert "breastmnist-resnet18 seed 0: already in" in printed
    assert "budget of 0 s spent; skipping breastmnist-resnet18 seed 1" in printed
    assert _load("_common").read_json(out, None)["records"] == [record]
