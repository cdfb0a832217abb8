"""`dualfuse cv`: folds grouped and stratified, out-of-fold pooling, the folder as a K-model ensemble, resume."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from conftest import breast_args

from dualfuse.api import load_model, predict
from dualfuse.api.cv import cross_validate
from dualfuse.config import ConfigError, DataConfig, SourceConfig, parse_run_args
from dualfuse.data.folds import plan_folds
from dualfuse.data.open import open_source

QUICK = ("--train.epochs", "1", "--train.limit_train_batches", "2")


@pytest.fixture(scope="module")
def cv_run(data_root, module_tmp):
    out = module_tmp("cv") / "cv"
    config, _ = parse_run_args(breast_args(data_root, out, *QUICK))
    seen = []
    summary = cross_validate(config, folds=2, on_fold=lambda k, n, path: seen.append(k))
    return out, config, summary, seen


def test_every_fold_case_is_scored_once_out_of_fold(cv_run):
    out, _, summary, seen = cv_run
    assert seen == [0, 1] and summary["folds_resumed"] == []
    splits = [pd.read_csv(out / f"fold_{k}" / "split.csv", dtype=str) for k in (0, 1)]
    val = [set(s.loc[s.split == "val", "case_id"]) for s in splits]
    assert val[0] and val[1] and not val[0] & val[1]
    for s in splits:  # test (BreastMNIST's own) and cal are the same in every fold, never in a fold's train/val
        assert set(s.loc[s.split == "test", "case_id"]) == set(splits[0].loc[splits[0].split == "test", "case_id"])
        assert set(s.loc[s.split == "cal", "case_id"]) == set(splits[0].loc[splits[0].split == "cal", "case_id"])
    pooled = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    assert set(pooled.case_id) == val[0] | val[1] and pooled.case_id.is_unique
    oof = summary["tasks"]["label"]["out_of_fold"]
    assert oof["roc_auc"]["ci_low"] <= oof["roc_auc"]["value"] <= oof["roc_auc"]["ci_high"]
    assert summary["folds"]["label"]["val"]["roc_auc"]["folds"] == 2
    assert summary["cv"]["cases"] == {"folds": len(pooled), "test": 156, "cal": summary["cv"]["cases"]["cal"]}


def test_the_cv_folder_is_a_calibrated_ensemble_of_its_fold_models(cv_run, data_root, tmp_path):
    out, _, summary, _ = cv_run
    loaded = load_model(out)
    assert len(loaded.members) == 2
    assert loaded.calibration is not None and loaded.calibration.default == "2x0"
    assert "test" in summary["ensemble"]["label"]
    frame = predict(out, [str(data_root / "medmnist" / "breastmnist.npz")], tmp_path / "p.csv", split="test")
    assert len(frame) == 156 and "label_refer" in frame


def test_an_interrupted_cv_resumes_at_the_missing_fold(cv_run, data_root):
    out, config, _, _ = cv_run
    kept = (out / "fold_0" / "model" / "model.safetensors").stat().st_mtime_ns
    for name in ("metrics.json",):
        os.remove(out / "fold_1" / name)  # as if fold 1 stopped before it finished
    seen = []
    summary = cross_validate(config, folds=2, on_fold=lambda k, n, path: seen.append(k))
    assert seen == [1] and summary["folds_resumed"] == [0]  # so a caller's wall clock covers fold 1 alone
    # the training time is every fold's, fold 0's (trained in the first call) included, not just this call's
    folds = [json.loads((out / f"fold_{k}" / "metrics.json").read_text())["train_seconds"] for k in (0, 1)]
    assert summary["train_seconds"] == pytest.approx(sum(folds), abs=0.1) and folds[0] > 0
    assert (out / "fold_0" / "model" / "model.safetensors").stat().st_mtime_ns == kept


def test_other_settings_on_an_existing_cv_fail_in_one_line(cv_run):
    out, config, _, _ = cv_run
    with pytest.raises(ValueError, match="holds a cv with folds 2, not 3") as error:
        cross_validate(config, folds=3)
    assert "\n" not in str(error.value)


def test_cv_refuses_ensembles_and_zip_mode(data_root, tmp_path):
    config, _ = parse_run_args(breast_args(data_root, tmp_path / "cv", "--train.members", "2"))
    with pytest.raises(ConfigError, match="train.members must be 1"):
        cross_validate(config, folds=2)
    assert not (tmp_path / "cv").exists()


def test_folds_group_patients_and_keep_the_test_set_out(data_root):
    """On TB chest X-rays (patient ids, own test split): no patient in two folds' val, test never in a fold."""
    dataset = open_source("tb", SourceConfig(format="manifest", path=str(data_root / "tb-cxr" / "manifest.csv")))
    plan = plan_folds(dataset, DataConfig(cal_fraction=0.1), n_folds=5, seed=0)
    patient = {r.case_id: r.patient_id for r in dataset.records}
    seen: dict[str, int] = {}
    for k, fold in enumerate(plan.folds):
        for case, split in fold.items():
            if split == "val":
                assert seen.setdefault(patient[case], k) == k
    test = {r.case_id for r in dataset.records if r.split == "test"}
    assert set(plan.test) == test and all(fold[c] == "test" for fold in plan.folds for c in test)
    assert len(plan.cal) > 0 and not set(plan.cal) & test
    with pytest.raises(ValueError, match="own test split"):
        plan_folds(dataset, DataConfig(), n_folds=5, test_fraction=0.2)
    json.dumps(plan.folds[0])  # plain data


def test_cli_cv_continues_a_finished_cv_and_prints_both_tables(cv_run, data_root, capsys):
    from dualfuse.cli import main

    out, _, _, _ = cv_run
    assert main(["cv", "--folds", "2", *breast_args(data_root, out, *QUICK)]) == 0
    printed = capsys.readouterr().out
    assert "2-fold cv x 1, pooled out of fold" in printed and "the 2 fold models as one ensemble" in printed
    assert "fold 1 of 2" not in printed  # nothing left to train
    assert main(["cv", *breast_args(data_root, out, *QUICK)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs --folds K" in err
