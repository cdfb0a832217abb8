"""The configs behind two benchmark comparisons: DRIFA-Net zip vs alone must see the same cases of each
dataset in both modes (else the paired difference compares different images), and the small-data
recipe preset must stack on a single-image config and pass the recipe checks."""
from __future__ import annotations

from pathlib import Path

import pytest

import dualfuse
from dualfuse.config import parse_run_args
from dualfuse.data.datamodule import ClassificationDataModule
from dualfuse.training.task import check_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ZIP = CONFIGS / "benchmarks" / "zip"


def _config(*files: str, extra: tuple[str, ...] = ()):
    argv = [arg for name in files for arg in ("--config", str(ZIP / f"{name}.yaml"))]
    return parse_run_args([*argv, *extra, "--train.seed", "3"])[0]


def _cases(config, source: str) -> dict[str, list[str]]:
    module = ClassificationDataModule(config.data, seed=config.train.seed)
    parts = module._split_sources()[source]
    return {split: sorted(record.case_id for record in part.records) for split, part in parts.items()}


@pytest.mark.realdata
@pytest.mark.parametrize("pair", [("brain_mri", "lung_ct"), ("ham10000", "herlev")], ids="+".join)
def test_each_dataset_has_the_same_cases_zipped_and_alone(pair, data_root, monkeypatch):
    monkeypatch.setenv("DUALFUSE_DATA", str(data_root))
    zipped = _config("drifa_net", *pair, extra=("--data.mode", "zip"))
    assert zipped.data.mode == "zip" and list(zipped.data.sources) == list(pair)
    for source in pair:
        alone = _config("drifa_net", source)
        assert alone.data.mode == "single" and list(alone.data.sources) == [source]
        in_zip, on_its_own = _cases(zipped, source), _cases(alone, source)
        assert in_zip == on_its_own, f"{source}: the splits differ between zip and alone"
        assert 0 < len(in_zip["test"]) <= zipped.data.max_eval_cases and 0 < len(in_zip["train"]) <= zipped.data.max_train_cases


def test_small_data_recipe_stacks_on_a_single_image_config():
    base = CONFIGS / "cpu" / "dcat_breast.yaml"
    plain, = parse_run_args(["--config", str(base)])[:1]
    recipe, = parse_run_args(["--config", str(base), "--config", str(CONFIGS / "recipes" / "small_data.yaml")])[:1]
    assert (recipe.train.ema_decay, recipe.train.mixup, recipe.train.class_weights) == (0.99, 0.2, "balanced")
    assert recipe.data.augment == {"policy": "trivial"} and recipe.model == plain.model
    assert {k: v for k, v in vars(recipe.data).items() if k != "augment"} == \
           {k: v for k, v in vars(plain.data).items() if k != "augment"}
    model = dualfuse.create_model(recipe.model.name, **recipe.model.kwargs, num_classes=2)
    check_recipe(vars(recipe.train), model, ["label"])  # mixup on a single-image, single-task model: accepted
