"""The small-data recipe parts: weight EMA, mixup/cutmix, balanced class weights, thread count."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import breast_args

from dualfuse.api import train
from dualfuse.config import ConfigError, parse_run_args
from dualfuse.models.saved import load_model, load_weights_only
from dualfuse.training.fit import balanced_class_weights

QUICK = ("--train.epochs", "1", "--train.limit_train_batches", "3")


class _Data:
    def __init__(self, labels):
        self.datasets = {"train": type("Train", (), {"labels": lambda self, task: np.asarray(labels)})()}


def test_balanced_class_weights_are_n_over_c_times_count():
    spec = type("Spec", (), {"tasks": {"label": ["a", "b", "c"]}})()
    weights = balanced_class_weights(_Data([0] * 6 + [1] * 3 + [2] * 1), spec)["label"]
    assert weights == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    # Weighted by these, every class carries the same total weight in the loss.
    assert 6 * weights[0] == pytest.approx(3 * weights[1]) == pytest.approx(1 * weights[2])


def test_ema_run_saves_and_serves_the_averaged_weights(data_root, tmp_path):
    config, _ = parse_run_args(breast_args(data_root, tmp_path / "run", *QUICK, "--train.ema_decay", "0.9",
                                           "--train.class_weights", "balanced", "--train.threads", "1"))
    train(config)
    assert torch.get_num_threads() == 1
    state = load_weights_only(tmp_path / "run" / "checkpoints" / "best.ckpt")["state_dict"]
    ema = {k[len("ema.module."):]: v for k, v in state.items() if k.startswith("ema.module.")}
    raw = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    assert ema and any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    saved, _ = load_model(tmp_path / "run" / "model")
    from_ckpt, _ = load_model(tmp_path / "run" / "checkpoints" / "best.ckpt")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, ema[name]) and torch.equal(from_ckpt.state_dict()[name], tensor), name


def test_mixup_and_cutmix_train_a_single_image_model(data_root, tmp_path):
    config, _ = parse_run_args(breast_args(data_root, tmp_path / "run", *QUICK, "--train.mixup", "0.2",
                                           "--train.cutmix", "1.0", "--train.label_smoothing", "0.1"))
    summary = train(config)
    assert np.isfinite(summary["tasks"]["label"]["val"]["roc_auc"]["value"])


def test_mixup_on_a_zip_model_fails_before_the_run_folder_exists(data_root, tmp_path):
    import json

    sources = {"a": {"format": "medmnist", "path": str(data_root / "medmnist" / "breastmnist.npz")},
               "b": {"format": "medmnist", "path": str(data_root / "medmnist" / "pneumoniamnist.npz")}}
    config, _ = parse_run_args(["--model.name", "drifa_net", "--model.kwargs", json.dumps({"in_chans": 1}),
                                "--data.mode", "zip", "--data.sources", json.dumps(sources), "--data.img_size", "32",
                                "--data.num_workers", "0", "--train.mixup", "0.2", "--output", str(tmp_path / "zip")])
    with pytest.raises(ValueError, match="train.mixup / train.cutmix need a single-image, single-task model"):
        train(config)
    assert not (tmp_path / "zip").exists()


@pytest.mark.parametrize("key, value", [("train.ema_decay", "1.5"), ("train.class_weights", "inverse"),
                                        ("train.threads", "0"), ("train.mixup", "-1")])
def test_bad_recipe_values_name_their_key(data_root, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_run_args(breast_args(data_root, tmp_path / "run", f"--{key}", value))
