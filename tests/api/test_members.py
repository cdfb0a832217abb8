"""A deep ensemble trained in one command: `train.members: K` writes members/<k>/ beside the run's model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import breast_args
from safetensors.torch import load_file

from dualfuse.api import evaluate, load_model, train
from dualfuse.api.run_folder import RunFolder
from dualfuse.config import ConfigError, parse_run_args
from dualfuse.training.task import ClassificationTask


def _args(data_root: Path, output: Path, *extra: str) -> list[str]:
    return breast_args(data_root, output, "--model.name", "timm_classifier",
                       "--model.kwargs", json.dumps({"backbone": "resnet18", "in_chans": 1}),
                       "--data.max_train_cases", "64", "--train.epochs", "2", "--eval.n_bootstrap", "20",
                       "--train.members", "2", "--train.posthoc_logit_adjustment", "1.0", *extra)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def two_members(data_root, module_tmp):
    output = module_tmp("members") / "run"
    config, _ = parse_run_args(_args(data_root, output))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every test (conftest): the resume test compares weights bit for bit
    try:
        return output, train(config)
    finally:
        torch.set_num_threads(threads)


def test_members_are_written_as_model_folders(two_members):
    output, summary = two_members
    assert summary["members"] == 2 and summary["epochs_trained"] == 2
    for name in ("model/model.safetensors", "checkpoints/last.ckpt", "members/1/model.safetensors",
                 "members/1/model.json", "members/1/checkpoints/last.ckpt", "members/1/logs/csv/metrics.csv"):
        assert (output / name).is_file(), name
    assert not (output / "members" / "0").exists()
    assert RunFolder(output).member_dirs() == [output / "members" / "1"]
    # Member 1 trained with seed + 1: other weights, the same architecture and spec.
    first, second = _weights(output / "model"), _weights(output / "members" / "1")
    assert first.keys() == second.keys() and not all(torch.equal(first[k], second[k]) for k in first)
    assert (output / "members" / "1" / "model.json").read_text() == (output / "model" / "model.json").read_text()
    assert json.loads((output / "model" / "model.json").read_text())["logit_offsets"] == summary["posthoc_logit_offsets"]
    checkpoint = torch.load(output / "members" / "1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["train"]["seed"] == 1
    assert len(load_model(output).members) == 2
    # metrics.json is member 0's evaluation.
    assert json.loads((output / "metrics.json").read_text())["tasks"] == summary["tasks"]


def test_evaluate_calibrates_every_predictor_of_the_run_ensemble(two_members, tmp_path):
    output = Path(shutil.copytree(two_members[0], tmp_path / "run"))
    summary = evaluate(output, output=tmp_path / "eval", splits=["test"], mc_samples=3)
    assert summary["ensemble_size"] == 2
    stored = json.loads((output / "model" / "uncertainty.json").read_text())
    assert set(stored["predictors"]) == {"1x0", "1x3", "2x0", "2x3"}


def test_resume_continues_the_interrupted_member_and_skips_finished_ones(two_members, data_root, tmp_path,
                                                                        monkeypatch):
    expected_dir, expected = two_members
    config, _ = parse_run_args(_args(data_root, tmp_path / "run"))
    original = ClassificationTask.on_train_epoch_start

    def crash_in_member_1_epoch_1(self):
        if self.train_config["seed"] == 1 and self.current_epoch == 1:
            raise RuntimeError("simulated crash")
        original(self)

    monkeypatch.setattr(ClassificationTask, "on_train_epoch_start", crash_in_member_1_epoch_1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config)
    run = tmp_path / "run"
    assert (run / "model" / "model.safetensors").is_file() and (run / "members/1/checkpoints/last.ckpt").is_file()
    assert not (run / "members" / "1" / "model.safetensors").exists() and not (run / "metrics.json").exists()
    monkeypatch.setattr(ClassificationTask, "on_train_epoch_start", original)

    import dualfuse.api.training as training

    fitted, fit = [], training.fit
    monkeypatch.setattr(training, "fit", lambda *a, **kw: fitted.append((a[3], a[4])) or fit(*a, **kw))
    stale = run / "members" / "1" / "checkpoints" / ".last.ckpt.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    resumed = train(config, resume=True)
    assert fitted == [(run / "members" / "1", True)]  # member 0 skipped, member 1 continued from its last.ckpt
    assert not stale.exists()
    assert resumed["tasks"] == expected["tasks"] and resumed["epochs_trained"] == expected["epochs_trained"]
    assert resumed["members"] == 2
    # Member 0 was not retrained: its post-hoc offsets come from its model.json, as the first run wrote them.
    assert resumed["posthoc_logit_offsets"] == expected["posthoc_logit_offsets"] and expected["posthoc_logit_offsets"]
    for folder in ("model", "members/1"):  # the same weights as the uninterrupted run
        got, want = _weights(run / folder), _weights(expected_dir / folder)
        assert all(torch.equal(got[k], want[k]) for k in want), folder

    fitted.clear()  # a finished run resumes without training anything
    again = train(config, resume=True)
    assert again["tasks"] == expected["tasks"] and fitted == []
    assert again["posthoc_logit_offsets"] == expected["posthoc_logit_offsets"]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_members_below_one_is_a_one_line_config_error(value, data_root, tmp_path):
    with pytest.raises(ConfigError) as error:
        parse_run_args(_args(data_root, tmp_path / "run", "--train.members", value))
    assert str(error.value) == f"config: train.members must be at least 1, got {value}"
    assert not (tmp_path / "run").exists()
