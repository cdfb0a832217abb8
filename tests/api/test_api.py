"""The public API seams: `load_model` without Lightning, `RunFolder`, round-1 run folders, and the
one-line errors of train/predict for bad arguments (the issue-17 rows that live above the data layer)."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from conftest import breast_args
from PIL import Image

import dualfuse
from dualfuse.api import RunFolder, load_model, predict, train
from dualfuse.cli import main
from dualfuse.config import parse_run_args
from dualfuse.models.spec import ModelSpec


def _small_args(data_root: Path, output: Path, *extra: str) -> list[str]:
    return breast_args(data_root, output, "--model.name", "timm_classifier",
                       "--model.kwargs", json.dumps({"backbone": "resnet18", "in_chans": 1}),
                       "--data.max_train_cases", "64", "--train.epochs", "1", "--eval.n_bootstrap", "20", *extra)


@pytest.fixture(scope="module")
def small_run(data_root, module_tmp):
    output = module_tmp("api") / "run"
    train(parse_run_args(_small_args(data_root, output))[0])
    return output


@pytest.fixture
def images(data_root, tmp_path) -> Path:
    """Four real BreastMNIST test images as PNG files in a folder."""
    folder = tmp_path / "images"
    folder.mkdir()
    arrays = np.load(data_root / "medmnist" / "breastmnist.npz")["test_images"][:4]
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"case{i}.png")
    return folder


def test_load_model_of_a_run_folder_never_imports_lightning(small_run):
    code = (f"import dualfuse, sys; m = dualfuse.load_model({str(small_run)!r}); "
            "assert 'lightning' not in sys.modules, 'lightning imported'; "
            "print(type(m.spec).__name__, m.spec.name, m.calibration)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ModelSpec", "timm_classifier", "None"]


def test_loaded_model_predicts_the_same_probabilities_as_predict(small_run, images, tmp_path):
    loaded = dualfuse.load_model(small_run)
    assert loaded.run.path == small_run and loaded.members == [loaded.model]
    frame = predict(small_run, [str(images)], tmp_path / "p.csv")
    from dualfuse.api.prediction import prediction_loader

    batch = next(iter(prediction_loader([str(images)], loaded.spec)))
    probs = loaded.predict_proba(batch["image"])["label"]
    np.testing.assert_allclose(probs, frame[["label_prob_malignant", "label_prob_normal_or_benign"]].to_numpy(),
                               atol=1e-6)


def test_run_folder_layout(small_run, tmp_path):
    run = RunFolder(small_run).require_finished()
    assert RunFolder.containing(small_run / "checkpoints" / "best.ckpt").path == small_run
    assert RunFolder.containing(tmp_path) is None
    assert run.spec().tasks == {"label": ["malignant", "normal_or_benign"]}
    assert run.metrics()["model"] == "timm_classifier" and run.calibration() is None
    assert run.folds() == [] and run.member_dirs() == []
    with pytest.raises(ValueError, match="not a finished run folder: config.yaml is missing"):
        RunFolder(tmp_path).require_finished()


def test_round_one_run_folder_still_loads(small_run, images, tmp_path):
    """Round 1 wrote format-1 specs: a single-task model was built with an int `num_classes`."""
    old = tmp_path / "old"
    (old / "model").mkdir(parents=True)
    (old / "config.yaml").write_bytes((small_run / "config.yaml").read_bytes())
    (old / "model" / "model.safetensors").write_bytes((small_run / "model" / "model.safetensors").read_bytes())
    spec = json.loads((small_run / "model" / "model.json").read_text())
    spec["model"]["kwargs"]["num_classes"] = 2
    spec.update(format_version=1, dualfuse_version="0.1.0")
    (old / "model" / "model.json").write_text(json.dumps(spec))
    loaded = load_model(old)
    assert loaded.spec.kwargs["num_classes"] == {"label": 2} and list(loaded.model.tasks) == ["label"]
    a = predict(small_run, [str(images)], tmp_path / "a.csv")
    b = predict(old, [str(images)], tmp_path / "b.csv")
    pd.testing.assert_frame_equal(a, b)


def test_spec_newer_than_this_dualfuse_fails_with_one_line(small_run, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes((small_run / "model" / "model.safetensors").read_bytes())
    spec = json.loads((small_run / "model" / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**spec, "format_version": 99}))
    assert main(["predict", str(model), str(tmp_path), "--output", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "format_version 99 is newer" in err and "upgrade dualfuse" in err


# -- bad input above the data layer (issue 17): one line naming the key or file, exit 2, nothing lost --

@pytest.mark.parametrize(("extra", "expected"), [
    (("--model.kwargs", json.dumps({"backbone": "resnet18", "in_chans": 1, "bogus_arg": 1})),
     "model.kwargs.bogus_arg: model 'timm_classifier' takes no such argument"),
    (("--model.kwargs", json.dumps({"backbone": "resnet18", "in_chans": 1, "drop_rate": 5.0})),
     "model.kwargs.drop_rate is a dropout probability and must be in [0, 1), got 5.0"),
    (("--train.monitor", "val/acuracy"), "train.monitor 'val/acuracy' is not a logged metric"),
])
def test_bad_train_arguments_fail_before_training(data_root, tmp_path, capsys, extra, expected):
    output = tmp_path / "run"
    assert main(["train", *_small_args(data_root, output, *extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not (output / "checkpoints").exists()


def test_predict_output_that_is_a_directory(small_run, images, tmp_path, capsys):
    assert main(["predict", str(small_run), str(images), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--output {tmp_path} is a directory" in err


def test_predict_batch_size_zero_is_refused(small_run, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(small_run), str(images), "--output", str(tmp_path / "p.csv"), "--batch-size", "0"])
    assert exit_info.value.code == 2 and "--batch-size: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_nan_weights_are_refused(small_run, images, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_bytes((small_run / "model" / "model.json").read_bytes())
    weights = safetensors.torch.load_file(small_run / "model" / "model.safetensors")
    weights["head.1.weight"][0, 0] = float("nan")
    safetensors.torch.save_file(weights, model / "model.safetensors")
    out = tmp_path / "p.csv"
    assert main(["predict", str(model), str(images), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "hold NaN or inf values (e.g. 'head.1.weight')" in err and "not loaded" in err
    assert not out.exists()


def test_plain_pickle_file_is_refused_as_pickle_code(tmp_path, capsys):
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps({"state_dict": {"w": [1.0, 2.0]}}, protocol=4))
    assert main(["predict", str(legacy), str(tmp_path), "--output", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "plain pickle file" in err and "nothing was loaded" in err and "Unsupported operand" not in err


def test_predict_skip_bad_lists_bad_files_and_predicts_the_rest(small_run, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "p.csv"
    assert main(["predict", str(small_run), str(images), "--output", str(out)]) == 2
    assert "broken.png" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(small_run), str(images), "--output", str(out), "--skip-bad"]) == 0
    assert "4 predictions" in capsys.readouterr().out
    frame = pd.read_csv(out, keep_default_na=False)
    assert len(frame) == 5
    bad = frame[frame["error"] != ""]
    assert bad["case_id"].tolist() == ["broken.png"] and (bad["label_pred"] == "").all()
    assert str(images) not in out.read_text()  # the reason names the file as given, never its absolute path


def test_predictions_never_show_absolute_paths(small_run, images, tmp_path):
    frame = predict(small_run, [str(images)], tmp_path / "p.csv")
    assert sorted(frame["case_id"]) == [f"case{i}.png" for i in range(4)]
    assert (frame["patient_id"].fillna("") == "").all()
    assert str(tmp_path) not in (tmp_path / "p.csv").read_text()


def test_model_card_shows_no_absolute_data_path(small_run, data_root):
    card = json.loads((small_run / "model" / "metadata.json").read_text())
    assert "breastmnist.npz" in card["data_source"]
    assert str(data_root) not in card["data_source"] and str(data_root.resolve()) not in card["data_source"]


def test_model_spec_round_trip(small_run, tmp_path):
    spec = ModelSpec.from_json(small_run / "model" / "model.json")
    (tmp_path / "spec.json").write_text(spec.to_json())
    assert ModelSpec.from_json(tmp_path / "spec.json") == spec
    assert list(spec.build().eval()(torch.zeros(1, 1, 32, 32))) == ["label"]


# -- issue 13: calibration per predictor, per-case numbers ------------------------------------------

@pytest.fixture(scope="module")
def calibrated_small(small_run, module_tmp):
    from dualfuse.api import evaluate

    run = module_tmp("cal") / "run"
    import shutil

    shutil.copytree(small_run, run)
    summary = evaluate(run, output=run / "evaluation", mc_samples=3, tta=2)
    return run, summary


def test_evaluate_calibrates_every_predictor_on_the_calibration_split(calibrated_small):
    run, summary = calibrated_small
    assert summary["calibration_split"] == "cal" and summary["calibration_note"] is None
    stored = json.loads((run / "model" / "uncertainty.json").read_text())
    assert stored["default"] == "1x3x2" and set(stored["predictors"]) == {"1x0", "1x3", "1x0x2", "1x3x2"}
    temperatures = {k: v["label"]["temperature"] for k, v in stored["predictors"].items()}
    assert len(set(temperatures.values())) == 4, temperatures  # each predictor fitted on its own samples
    # how each temperature was fitted travels with it: the prior on log T (None would mean the NLL alone)
    assert {v["label"]["temperature_prior_sd"] for v in stored["predictors"].values()} == {1.0}
    report = summary["uncertainty"]["label"]
    assert report["temperature_prior_sd"] == 1.0
    assert set(report["predictors"]) == set(stored["predictors"]) and "test" in report["predictors"]["1x3x2"]


def test_a_case_gets_the_same_numbers_whatever_the_batch(calibrated_small, images, tmp_path):
    run, _ = calibrated_small
    frames = [predict(run, [str(images)], tmp_path / f"b{size}.csv", batch_size=size) for size in (1, 7, 64)]
    rows = sorted((images).iterdir())
    manifest = tmp_path / "reversed.csv"
    manifest.write_text("case_id,image\n" + "".join(f"{p.name},{p}\n" for p in reversed(rows)))
    reversed_frame = predict(run, [str(manifest)], tmp_path / "rev.csv", batch_size=7)
    reference = frames[0].set_index("case_id").sort_index()
    columns = [c for c in reference.columns if c.startswith("label_") and c != "label_set"]
    for other in (*frames[1:], reversed_frame):
        other = other.set_index("case_id").sort_index()
        assert (other[columns] == reference[columns]).all().all()  # bit for bit, refer flags included
        assert (other["label_set"] == reference["label_set"]).all()


def test_predict_with_another_predictor_uses_its_own_calibration(calibrated_small, images, tmp_path):
    run, _ = calibrated_small
    stored = json.loads((run / "model" / "uncertainty.json").read_text())
    softmax = predict(run, [str(images)], tmp_path / "s.csv", mc_samples=0, tta=1)
    assert "label_mutual_information" not in softmax.columns
    assert set(json.loads((run / "model" / "uncertainty.json").read_text())["predictors"]) == set(stored["predictors"])
    # A predictor evaluate did not fit (5 samples) is fitted on the calibration split, never borrowed.
    with pytest.warns(UserWarning, match="not calibrated yet"):
        predict(run, [str(images)], tmp_path / "m5.csv", mc_samples=5, tta=1)
    refitted = json.loads((run / "model" / "uncertainty.json").read_text())["predictors"]
    assert "1x5" in refitted and refitted["1x5"]["label"]["temperature"] != stored["predictors"]["1x3"]["label"][
        "temperature"]


@pytest.mark.parametrize("call, match", [
    (lambda path: dualfuse.api.evaluate(path, alpha=0), r"^alpha must be a number strictly between 0 and 1, got 0$"),
    (lambda path: dualfuse.api.evaluate(path, alpha=True), r"^alpha must be a number strictly between 0 and 1"),
    (lambda path: dualfuse.api.evaluate(path, target_accuracy=1.5), r"^target_accuracy must be a number in \(0, 1\]"),
    (lambda path: dualfuse.api.report(path, alpha=1.0), r"^alpha must be a number strictly between 0 and 1, got 1.0$"),
])
def test_bad_uncertainty_settings_are_refused_before_the_model_is_opened(tmp_path, call, match):
    """A miscoverage or target out of range names itself, not the run folder, which is never opened:
    the folder here does not even exist, so any later check would fail with a different message."""
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "no_such_run")
