"""`dualfuse compare`: A − B on the same cases, with the paired CIs of docs/benchmarks.md."""
from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dualfuse.api.compare import compare
from dualfuse.cli import main
from dualfuse.evaluation.paired import METHOD_NAMES, format_difference

REPO_ROOT = Path(__file__).resolve().parents[2]
CASES = REPO_ROOT / "docs" / "results" / "cases" / "accuracy_cpu"


def _write(folder: Path, labels, probs, case_ids=None, split="test", patients=None, classes=("a", "b")) -> Path:
    """A dualfuse predictions.csv (as `train` writes it) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    probs = np.asarray(probs, dtype=float)
    frame = pd.DataFrame({"case_id": case_ids or [f"c{i}" for i in range(len(labels))],
                          "patient_id": patients or [""] * len(labels)})
    if split is not None:
        frame["split"] = split
    frame["label_true"] = [classes[label] for label in labels]
    for k, name in enumerate(classes):
        frame[f"label_prob_{name}"] = probs[:, k]
    frame.to_csv(folder / "predictions.csv", index=False)
    return folder


def _scores(rng, labels, skill):
    """Two-class probabilities whose ranking of the positives improves with `skill`."""
    p = 1 / (1 + np.exp(-(skill * (np.asarray(labels) * 2 - 1) + rng.normal(size=len(labels)))))
    return np.c_[1 - p, p]


def _docs_line(dataset_heading: str, pair: str) -> str:
    text = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
    return next(line for line in text.splitlines() if line.startswith(f"| {dataset_heading} | {pair} |"))


def test_compare_reproduces_the_docs_verdict_from_the_same_predictions(tmp_path: Path):
    """Brain MRI, DCAT − ResNet-18, 3 seeds: the stored per-case predictions, written as the predictions.csv
    a user's runs hold, give the docs' printed ΔAUC and ΔACC to the digit."""
    sides = {}
    for model in ("dcat", "resnet18"):
        for seed in range(3):
            (path,) = CASES.glob(f"brain_mri64-{model}-{seed}-cpu-*.json.gz")
            cases = json.load(gzip.open(path))["tasks/label/per_case"]
            _write(tmp_path / f"{model}_seed{seed}", cases["label"], cases["probs"], cases["case_id"],
                   classes=("glioma", "meningioma", "notumor", "pituitary"))
        sides[model] = str(tmp_path / f"{model}_seed*")
    result = compare(sides["dcat"], sides["resnet18"])
    entry = result["tasks"]["label"]
    assert result["seeds"] == 3 and entry["seeds_resampled"] == "together" and entry["cases"] == 1092
    cells = [c.strip() for c in _docs_line("Brain tumor MRI (4 classes)", "dcat − resnet18").split("|")]
    assert format_difference(entry["metrics"]["auc"]["difference"]) == cells[6]
    assert entry["metrics"]["auc"]["verdict"] == cells[7].strip("*")
    assert f"{format_difference(entry['metrics']['acc']['difference'])} {entry['metrics']['acc']['verdict']}" == cells[8]


def test_a_better_model_wins_a_model_against_itself_ties_at_zero(tmp_path: Path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    strong = _write(tmp_path / "strong", labels, _scores(rng, labels, 2.5))
    weak = _write(tmp_path / "weak", labels, _scores(rng, labels, 0.4))
    result = compare(strong, weak, n_bootstrap=300)
    metrics = result["tasks"]["label"]["metrics"]
    assert {m["verdict"] for m in metrics.values()} == {"win"}
    assert compare(weak, strong, n_bootstrap=300)["tasks"]["label"]["metrics"]["auc"]["verdict"] == "loss"
    same = compare(strong, strong / "predictions.csv", n_bootstrap=300)["tasks"]["label"]["metrics"]
    assert all(m["difference"]["delta"] == 0 and m["verdict"] == "tie" for m in same.values())
    assert same["auc"]["difference"]["ci_low"] == same["auc"]["difference"]["ci_high"] == 0  # one ranking: no doubt
    # no discordant case among these 300 says little about the next 300: MOVER keeps a narrow interval
    assert -0.03 < same["acc"]["difference"]["ci_low"] < 0 < same["acc"]["difference"]["ci_high"] < 0.03
    assert result["a"]["name"] == "strong" and result["b"]["name"] == "weak"


def test_patients_with_several_images_are_resampled_whole(tmp_path: Path):
    rng = np.random.default_rng(1)
    patient_labels = rng.integers(0, 2, 60)
    labels = np.repeat(patient_labels, 3)  # 3 images per patient
    patients = [f"p{i // 3}" for i in range(len(labels))]
    a = _write(tmp_path / "a", labels, _scores(rng, labels, 1.5), patients=patients)
    b = _write(tmp_path / "b", labels, _scores(rng, labels, 1.0), patients=patients)
    entry = compare(a, b, n_bootstrap=200)["tasks"]["label"]
    assert entry["resampled"] == "patients" and entry["patients"] == 60 and entry["cases"] == 180


def test_seeds_pair_by_the_seed_each_run_recorded(trained_breast_run, tmp_path: Path):
    """A's runs given in another order than B's still pair seed with seed; unequal run counts are an error."""
    run, _ = trained_breast_run
    runs = {}
    for side in ("a", "b"):
        for seed in (0, 1):
            copy = tmp_path / f"{side}{seed}"
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "logs", "report*"))
            config = (copy / "config.yaml").read_text()
            (copy / "config.yaml").write_text(re.sub(r"(\n  seed:) 0\n", rf"\1 {seed}\n", config, count=1))
            runs[side, seed] = copy
    result = compare([runs["a", 1], runs["a", 0]], [runs["b", 0], runs["b", 1]], n_bootstrap=50)
    pairs = list(zip(result["a"]["predictions"], result["b"]["predictions"]))
    assert [(Path(x).parent.name, Path(y).parent.name) for x, y in pairs] == [("a1", "b1"), ("a0", "b0")]
    assert result["tasks"]["label"]["metrics"]["auc"]["verdict"] == "tie"  # the same model on both sides
    with pytest.raises(ValueError, match=r"a0 \(\+1 more\) has 2 run\(s\) and b0 1: give one run per seed"):
        compare([runs["a", 0], runs["a", 1]], [runs["b", 0]])


def test_bad_input_is_one_clear_line(tmp_path: Path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 40)
    a = _write(tmp_path / "a", labels, _scores(rng, labels, 1.0))
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder"):
        compare(a, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no predictions.csv"):
        compare(a, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="the pattern matches no file"):
        compare(a, str(tmp_path / "nothing_*"))
    other_cases = _write(tmp_path / "other", labels, _scores(rng, labels, 1.0), [f"x{i}" for i in range(40)])
    with pytest.raises(ValueError, match="were scored on different test cases"):
        compare(a, other_cases)
    flipped = _write(tmp_path / "flipped", 1 - labels, _scores(rng, labels, 1.0))
    with pytest.raises(ValueError, match="disagree on the labels"):
        compare(a, flipped)
    three = _write(tmp_path / "three", labels, rng.dirichlet(np.ones(3), 40), classes=("a", "b", "c"))
    with pytest.raises(ValueError, match="predicts other classes for task 'label'"):
        compare(a, three)
    with pytest.raises(ValueError, match="no case of split 'val'"):
        compare(a, a, split="val")
    with pytest.raises(ValueError, match="task 'grade' is not predicted by both sides"):
        compare(a, a, task="grade")
    out_of_fold = _write(tmp_path / "cv", labels, _scores(rng, labels, 1.0), split=None)
    with pytest.raises(ValueError, match="mix a cv folder's out-of-fold predictions"):
        compare(a, out_of_fold)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: unreadable CSV"):
        compare(a, tmp_path / "empty.csv")
    _write(tmp_path / "predicted", labels, _scores(rng, labels, 1.0))
    predicted = pd.read_csv(tmp_path / "predicted" / "predictions.csv").drop(columns=["label_true", "split"])
    predicted.to_csv(tmp_path / "predicted.csv", index=False)  # what `predict` writes: no true labels
    with pytest.raises(ValueError, match="predicted.csv: not a dualfuse predictions.csv with true labels"):
        compare(a, tmp_path / "predicted.csv")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt: not a predictions.csv"):
        compare(a, tmp_path / "notes.txt")


def test_cli_prints_the_table_writes_json_and_says_why_it_cannot(tmp_path: Path, capsys):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    a = _write(tmp_path / "cv_a", labels, _scores(rng, labels, 2.0), split=None)  # two cv folders: out of fold
    b = _write(tmp_path / "cv_b", labels, _scores(rng, labels, 0.5), split=None)
    output = tmp_path / "compare.json"
    assert main(["compare", str(a), str(b), "--names", "DCAT", "ResNet", "--n-bootstrap", "200",
                 "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "DCAT − ResNet" in printed and "out of fold" in printed and "win" in printed
    written = json.loads(output.read_text())
    assert written["split"] == "out of fold" and written["a"]["name"] == "DCAT"
    assert written["tasks"]["label"]["metrics"]["auc"]["verdict"] == "win"
    caption = " ".join(printed.split())  # rich wraps the caption
    for metric in written["tasks"]["label"]["metrics"].values():  # the caption says how each CI was made
        method = METHOD_NAMES[metric["difference"]["score_method"]]
        assert re.search(rf"bootstrap \+ {method} for [a-z ,]*\b{metric['label']}\b", caption), (metric["label"], caption)
    assert "bootstrap + DeLong for AUC" in caption and "paired over cases" in caption
    assert main(["compare", str(a), str(b), str(a)]) == 2  # an unquoted glob, expanded by the shell
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "quote a glob pattern" in error
    before = output.read_bytes()
    assert main(["compare", str(a), str(tmp_path / "missing"), "--output", str(output)]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err
    assert output.read_bytes() == before  # a failed comparison leaves the earlier one in place


def test_a_true_class_without_a_probability_column_is_named(tmp_path: Path):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 30)
    a = _write(tmp_path / "a", labels, _scores(rng, labels, 1.0))
    frame = pd.read_csv(a / "predictions.csv")
    frame.loc[0, "label_true"] = "c"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: task 'label' has true classes without probability columns: \['c'\]"):
        compare(a, tmp_path / "bad.csv")
