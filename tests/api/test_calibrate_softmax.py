"""`evaluate --calibrate`: the softmax gets its own temperature, referral and conformal thresholds, no MC."""
from __future__ import annotations

import json

import pytest
from conftest import breast_args

from dualfuse.api import evaluate, predict, train
from dualfuse.cli import main
from dualfuse.config import parse_run_args


def test_calibrated_softmax_is_stored_and_used_by_predict(data_root, tmp_path, capsys):
    config, _ = parse_run_args(breast_args(data_root, tmp_path / "run", "--train.epochs", "1",
                                           "--train.limit_train_batches", "2"))
    train(config)
    evaluate(tmp_path / "run", output=tmp_path / "plain")
    assert not (tmp_path / "run" / "model" / "uncertainty.json").exists()  # plain evaluate stores nothing
    assert main(["evaluate", str(tmp_path / "run"), "--calibrate", "--output", str(tmp_path / "cal")]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "uncertainty: softmax, calibrated on the cal split" in printed
    stored = json.loads((tmp_path / "run" / "model" / "uncertainty.json").read_text())
    # BreastMNIST's calibration split is small: the CLI says how far its 90% sets' coverage may swing.
    spread = json.loads((tmp_path / "cal" / "metrics.json").read_text())["uncertainty"]["label"]["conformal_spread"]
    assert spread["n_cal"] < 110 and f"cover between {spread['low']:.2f} and {spread['high']:.2f}" in printed
    assert stored["default"] == "1x0" and set(stored["predictors"]) == {"1x0"}
    frame = predict(tmp_path / "run", [str(data_root / "medmnist" / "breastmnist.npz")], tmp_path / "p.csv",
                    split="test")
    assert {"label_refer", "label_set"} <= set(frame.columns) and "label_mutual_information" not in frame
    metrics = json.loads((tmp_path / "cal" / "metrics.json").read_text())
    assert metrics["predictor"] == "1x0" and metrics["mc_samples"] == 0
    # A 99% target cannot be certified from a barely trained model's calibration cases: every case is
    # referred and the CLI says why in one line.
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--calibrate", "--target-accuracy", "0.99",
                 "--output", str(tmp_path / "strict")]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "no referral threshold reaches 0.99 accuracy with 95% probability on the" in printed
    assert "(it takes at least 368 decided cases, all right)" in printed  # 0.99 ** 368 <= 0.025
    stored = json.loads((tmp_path / "run" / "model" / "uncertainty.json").read_text())
    assert stored["predictors"]["1x0"]["label"]["referral"]["guarantee"] == 0.95
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path / "run"), "--target-accuracy", "0.9", "--guarantee", "1.5"])
    assert "--guarantee: must be a probability in [0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path / "run"), "--target-coverage", "1.5"])
    assert "--target-coverage: must be a number in (0, 1], got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path / "run"), "--alpha", "1"])
    assert "--alpha: must be a number strictly between 0 and 1, got 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^target_coverage must be a number in \(0, 1\], got 0$"):
        evaluate(tmp_path / "run", output=tmp_path / "zero", target_coverage=0)
    assert not (tmp_path / "zero").exists()
