"""The main job end to end on real data: train, evaluate, predict, resume, DDP, and clear errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import breast_args

from dualfuse.api import evaluate, predict, train
from dualfuse.cli import main
from dualfuse.config import parse_run_args
from dualfuse.evaluation.metrics import METRICS
from dualfuse.training.task import ClassificationTask


@pytest.fixture(scope="module")
def breast_run(trained_breast_run, module_tmp):
    """This module's copy of the session's 4-epoch BreastMNIST run, and what `train` returned."""
    run, summary = trained_breast_run
    return copy_run(run, module_tmp("breast") / "run"), summary


def test_short_breastmnist_run_beats_chance_on_val(breast_run):
    _, summary = breast_run
    auc = summary["tasks"]["label"]["val"]["roc_auc"]
    assert auc["value"] > 0.7 and auc["ci_low"] > 0.5, auc


def test_run_folder_has_documented_files_and_schema(breast_run):
    output, summary = breast_run
    for name in ("config.yaml", "split.csv", "metrics.json", "predictions.csv", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "model/model.safetensors", "model/model.json", "logs/csv/metrics.csv"):
        assert (output / name).is_file(), name
    assert list((output / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    for split in ("val", "test"):
        per_split = metrics["tasks"]["label"][split]
        for name in METRICS:
            assert set(per_split[name]) >= {"value", "ci_low", "ci_high"}
            assert per_split[name]["ci_low"] <= per_split[name]["value"] <= per_split[name]["ci_high"]
        assert per_split["n"] == {"val": 78, "test": 156}[split]
    frame = pd.read_csv(output / "predictions.csv")
    assert list(frame.columns) == ["case_id", "patient_id", "split", "label_true", "label_pred",
                                   "label_prob_malignant", "label_prob_normal_or_benign"]
    assert frame["split"].value_counts().to_dict() == {"test": 156, "val": 78}
    # Checkpoints are loadable without arbitrary pickle code.
    checkpoint = torch.load(output / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["spec"]["model"]["name"] == "dcat"


def test_evaluate_and_predict_agree_with_training(breast_run, data_root, tmp_path):
    output, summary = breast_run
    evaluated = evaluate(output, output=tmp_path / "eval")
    assert evaluated["tasks"]["label"]["test"]["roc_auc"] == summary["tasks"]["label"]["test"]["roc_auc"]
    trained = pd.read_csv(output / "predictions.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "eval" / "predictions.csv"), trained, check_exact=False,
                                  atol=1e-6, rtol=0)

    frame = predict(output, [str(data_root / "medmnist" / "breastmnist.npz")], tmp_path / "pred.csv", split="test")
    assert list(frame.columns) == ["case_id", "patient_id", "label_pred", "label_prob_malignant",
                                   "label_prob_normal_or_benign"]
    test_rows = trained[trained["split"] == "test"]
    merged = frame.merge(test_rows, on="case_id", suffixes=("", "_train"))
    assert len(merged) == 156
    for column in ("label_prob_malignant", "label_prob_normal_or_benign"):
        assert (merged[column] - merged[f"{column}_train"]).abs().max() < 1e-5
    assert (merged["label_pred"] == merged["label_pred_train"]).all()


def test_cli_evaluate_and_predict(breast_run, data_root, tmp_path, capsys):
    output, _ = breast_run
    assert main(["evaluate", str(output / "model"), "--split", "test", "--output", str(tmp_path / "e")]) == 0
    assert "roc_auc" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "e" / "metrics.json").read_text())["tasks"]["label"]) == {"test"}
    npz = str(data_root / "medmnist" / "breastmnist.npz")
    assert main(["predict", str(output / "checkpoints" / "best.ckpt"), npz, "--split", "val",
                 "--output", str(tmp_path / "p.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 78


def _small_args(data_root: Path, output: Path, *extra: str) -> list[str]:
    return breast_args(data_root, output, "--model.name", "timm_classifier",
                       "--model.kwargs", json.dumps({"backbone": "resnet18", "in_chans": 1}),
                       "--data.max_train_cases", "96", "--train.epochs", "3", "--train.warmup_epochs", "1",
                       "--eval.n_bootstrap", "50", *extra)


def test_resume_after_interruption_reproduces_uninterrupted_run(data_root, tmp_path, monkeypatch):
    uninterrupted, _ = parse_run_args(_small_args(data_root, tmp_path / "a"))
    expected = train(uninterrupted)

    original = ClassificationTask.on_train_epoch_start

    def crash_in_second_epoch(self):
        if self.current_epoch == 1:
            raise RuntimeError("simulated crash")
        original(self)

    config, _ = parse_run_args(_small_args(data_root, tmp_path / "b"))
    monkeypatch.setattr(ClassificationTask, "on_train_epoch_start", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config)
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "b" / "metrics.json").exists()
    monkeypatch.setattr(ClassificationTask, "on_train_epoch_start", original)

    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        train(config)
    # A write killed mid-way leaves its hidden temporary file; the next start removes it.
    stale = tmp_path / "b" / "checkpoints" / ".best.ckpt.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    resumed = train(config, resume=True)
    assert resumed["tasks"] == expected["tasks"]
    assert resumed["epochs_trained"] == expected["epochs_trained"] == 3
    assert not stale.exists()
    # The CSV log keeps the epochs before the crash: the same rows as the uninterrupted run.
    history = {name: pd.read_csv(tmp_path / name / "logs" / "csv" / "metrics.csv") for name in ("a", "b")}
    assert len(history["b"]) == len(history["a"])
    assert sorted(history["b"]["epoch"].dropna().unique()) == sorted(history["a"]["epoch"].dropna().unique()) == [0, 1, 2]


def test_zip_mode_drifa_net_trains_one_head_per_dataset(data_root, tmp_path):
    sources = {
        "mri": {"format": "folder", "path": str(data_root / "brain-tumor-mri")},
        "xray": {"format": "medmnist", "path": str(data_root / "medmnist" / "pneumoniamnist.npz")},
    }
    config, _ = parse_run_args([
        "--model.name", "drifa_net", "--model.kwargs", json.dumps({"backbone": "resnet10t"}),  # small: fast checkpoints
        "--data.mode", "zip", "--data.sources", json.dumps(sources), "--data.img_size", "32", "--data.max_train_cases", "64", "--data.max_eval_cases", "48",
        "--data.num_workers", "0", "--data.batch_size", "16", "--train.epochs", "1",
        "--train.progress_bar", "false", "--eval.n_bootstrap", "20", "--output", str(tmp_path / "zip"),
    ])
    summary = train(config)
    assert set(summary["tasks"]) == {"mri_label", "xray_label"}
    # Each head is judged on its own dataset's cases, once each.
    assert summary["tasks"]["mri_label"]["test"]["n"] == 48
    assert summary["tasks"]["xray_label"]["test"]["n"] == 48
    assert len(summary["tasks"]["mri_label"]["test"]["confusion_matrix"]) == 4


def test_ddp_two_cpu_processes(data_root, tmp_path):
    args = _small_args(data_root, tmp_path / "ddp", "--train.epochs", "1", "--train.accelerator", "cpu",
                       "--train.devices", "2", "--train.strategy", "ddp", "--train.deterministic", "false")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "dualfuse.cli", "train", *args], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["tasks"]["label"]["test"]["n"] == 156


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_malformed_config_key_fails_with_one_line(data_root, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  epoch: 3\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "'train' does not accept option 'epoch'" in _one_line_error(capsys)
    assert main(["train", *breast_args(data_root, tmp_path / "x"), "--train.lr", "fast"]) == 2
    assert 'train.lr' in _one_line_error(capsys)


def test_missing_data_path_fails_with_one_line(tmp_path, capsys):
    sources = json.dumps({"xray": {"format": "medmnist", "path": str(tmp_path / "nope.npz")}})
    assert main(["train", "--data.sources", sources, "--output", str(tmp_path / "run")]) == 2
    assert f"data.sources.xray.path: {tmp_path / 'nope.npz'} not found" in _one_line_error(capsys)
    sources = json.dumps({"xray": {"format": "medmnist", "path": "${DUALFUSE_UNSET_VARIABLE}/x.npz"}})
    assert main(["train", "--data.sources", sources, "--output", str(tmp_path / "run")]) == 2
    assert "${DUALFUSE_UNSET_VARIABLE}, which is not set" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()  # a failed start leaves no half-made run folder


def test_checkpoint_for_a_different_model_fails_with_one_line(breast_run, data_root, tmp_path, capsys):
    output, _ = breast_run
    other = tmp_path / "other.yaml"
    other.write_text((output / "config.yaml").read_text().replace("name: dcat", "name: drifa_net"))
    assert main(["evaluate", str(output / "checkpoints" / "best.ckpt"), "--config", str(other)]) == 2
    assert "is a checkpoint for model 'dcat', expected 'drifa_net'" in _one_line_error(capsys)


def test_pickle_payload_checkpoint_does_not_execute(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"spec": Payload()}}, evil)
    assert main(["evaluate", str(evil)]) == 2
    assert "refused to load" in _one_line_error(capsys)
    assert not marker.exists()


def copy_run(run_dir: Path, target: Path) -> Path:
    """Calibration writes beside the model: give each test its own copy of the trained run."""
    shutil.copytree(run_dir, target)
    return target


@pytest.fixture(scope="module")
def calibrated(breast_run, data_root, module_tmp):
    output = copy_run(breast_run[0], module_tmp("calibrated") / "run")
    out_dir = output.parent / "evaluation"
    summary = evaluate(output, output=out_dir, mc_samples=10, alpha=0.1,
                       ood=str(data_root / "medmnist" / "pneumoniamnist.npz"))
    return output, out_dir, summary


def test_each_predictor_gets_its_own_temperature_on_the_calibration_split(calibrated):
    output, _, summary = calibrated
    report = summary["uncertainty"]["label"]
    cal = report["calibration"][summary["calibration_split"]]
    assert cal["softmax_temperature"]["nll"] <= cal["softmax"]["nll"] + 1e-9
    assert cal["predictor_temperature"]["nll"] <= cal["predictor"]["nll"] + 1e-9
    for variant in ("softmax", "softmax_temperature", "predictor", "predictor_temperature"):
        assert set(cal[variant]) >= {"ece", "ace", "nll", "brier", "reliability"}
    stored = json.loads((output / "model" / "uncertainty.json").read_text())
    assert stored["format"] == 2 and stored["default"] == "1x10" and set(stored["predictors"]) == {"1x0", "1x10"}
    # The MC predictor's temperature is fitted to its own mean predictive distribution, not the softmax's.
    assert stored["predictors"]["1x10"]["label"]["temperature"] == report["temperature"]
    assert set(report["predictors"]) == {"1x0", "1x10"}


def test_conformal_coverage_on_real_data_is_near_target(calibrated):
    _, _, summary = calibrated
    for score in ("lac", "aps"):
        report = summary["uncertainty"]["label"]["conformal"][score]
        assert report["n_test"] == 156
        assert report["coverage_ci_low"] <= report["coverage"] <= report["coverage_ci_high"]
        assert abs(report["coverage"] - 0.9) <= 0.08, report
        assert report["below_target"] == (report["coverage_ci_high"] < 0.9)
        assert [c["n"] for c in report["class_coverage"]] == [42, 114]


def test_referral_threshold_meets_its_target_on_the_calibration_split(calibrated, tmp_path):
    output, _, summary = calibrated
    referral = summary["uncertainty"]["label"]["referral"]
    cal = summary["calibration_split"]
    assert referral["target_coverage"] == 0.9
    if referral["reachable"]:  # the decided share, conformal filter included
        assert referral[cal]["coverage"] >= 0.9
    else:  # fewer one-class conformal sets than 90%: every one of them is decided, and a warning says so
        assert referral[cal]["n_accepted"] == referral["n_decidable"]
        assert any("one-class conformal set" in w for w in summary["uncertainty"]["label"]["warnings"])
    stored = json.loads((output / "model" / "uncertainty.json").read_text())
    assert stored["predictors"]["1x10"]["label"]["referral"]["threshold"] == referral["threshold"]

    strict = evaluate(copy_run(output, tmp_path / "run"), output=tmp_path / "strict", mc_samples=10,
                      target_accuracy=0.9)
    by_accuracy = strict["uncertainty"]["label"]["referral"]
    assert by_accuracy["guarantee"] == 0.95  # certified by default
    if by_accuracy["reachable"]:
        low = by_accuracy[cal]["referred_low_confidence"]
        assert low < 1 and by_accuracy["accuracy_lower_bound"] >= 0.9
        assert by_accuracy["certified_by"] in ("binary search", "fixed sequence") and by_accuracy["bound_level"] > 0.95
    else:
        assert by_accuracy[cal]["referred_low_confidence"] == 1.0
        assert any(w.startswith("no referral threshold reaches 0.90 accuracy with 95% probability on the")
                   for w in strict["uncertainty"]["label"]["warnings"])
    # Read off the calibration cases instead: never refers more than the certified threshold.
    plain = evaluate(copy_run(output, tmp_path / "plain_run"), output=tmp_path / "plain", mc_samples=10,
                     target_accuracy=0.9, guarantee=None)["uncertainty"]["label"]["referral"]
    assert plain.get("guarantee") is None and plain["threshold"] <= by_accuracy["threshold"]
    decided = plain["test"]
    if decided["n_accepted"]:  # the test cases it decides, with an exact 95% CI
        low, high = decided["accuracy_of_accepted_ci"]
        assert low <= decided["accuracy_of_accepted"] <= high


def test_selective_and_ood_sections(calibrated):
    _, _, summary = calibrated
    report = summary["uncertainty"]["label"]
    for split in ("val", "test"):
        selective = report["selective"][split]
        assert 0 <= selective["aurc"] <= 1 and set(selective["accuracy_at_coverage"]) == {"0.8", "0.9", "0.95"}
        assert set(report["measures"][split]) == {"predictive_entropy", "mutual_information", "expected_entropy"}
    assert {"predictive_entropy", "mutual_information"} <= set(report["ood"])
    assert 0 <= report["ood"]["mutual_information"]["auroc"] <= 1
    assert summary["mc_samples"] == 10 and summary["ensemble_size"] == 1


def test_predict_applies_calibration_and_matches_evaluate_exactly(calibrated, data_root, tmp_path):
    output, out_dir, summary = calibrated
    frame = predict(output, [str(data_root / "medmnist" / "breastmnist.npz")], tmp_path / "p.csv", split="test")
    for column in ("label_entropy", "label_normalized_entropy", "label_expected_entropy", "label_mutual_information",
                   "label_variation_ratio", "label_std_malignant", "label_refer", "label_set"):
        assert column in frame.columns, column
    evaluated = pd.read_csv(out_dir / "predictions.csv", keep_default_na=False)
    test_rows = evaluated[evaluated["split"] == "test"]
    merged = frame.merge(test_rows, on="case_id", suffixes=("", "_eval"))
    assert len(merged) == 156
    # Same predictor, same calibration, masks per case: predict repeats evaluate's numbers.
    for column in ("label_prob_malignant", "label_mutual_information"):
        assert (merged[column] - merged[f"{column}_eval"]).abs().max() < 1e-6
    assert (merged["label_refer"] == merged["label_refer_eval"]).all()
    assert (merged["label_set"].fillna("") == merged["label_set_eval"]).all()
    threshold = summary["uncertainty"]["label"]["referral"]["threshold"]
    confidence = frame[["label_prob_malignant", "label_prob_normal_or_benign"]].max(axis=1)
    set_size = frame["label_set"].fillna("").map(lambda text: len([c for c in text.split("|") if c]))
    assert (frame["label_refer"] == ((confidence < threshold) | (set_size != 1))).all()


def test_ensemble_averages_all_members(breast_run, tmp_path):
    output = copy_run(breast_run[0], tmp_path / "run")
    summary = evaluate(output, output=tmp_path / "ens", splits=["test"], mc_samples=4,
                       ensemble=[str(output / "checkpoints" / "last.ckpt")])
    assert summary["ensemble_size"] == 2
    stored = json.loads((output / "model" / "uncertainty.json").read_text())
    assert stored["members"] == [str((output / "checkpoints" / "last.ckpt").resolve())]
    assert set(stored["predictors"]) == {"1x0", "1x4", "2x0", "2x4"} and stored["default"] == "2x4"
