"""The multitask model (one shared trunk, one head per dataset): outputs, errors, zip-mode training, and
fine-tuning a plain model from it (`model.init_from` loads every trunk tensor, the head is new)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dualfuse
from dualfuse.api import train
from dualfuse.config import expand_path, parse_run_args
from dualfuse.explain.gradcam import class_activation_maps
from dualfuse.models.multitask import TRUNK_PREFIX
from dualfuse.models.saved import save_model
from dualfuse.models.spec import ModelSpec, Preprocessing
from dualfuse.models.transfer import adapt_channels, head_parameter_names, transfer_weights

PX = 32
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
SMALL_DCAT = {"embed_dim": 32, "num_heads": 2}
TRUNKS = {"resnet18": ("timm_classifier", {"backbone": "resnet18"}), "dcat": ("dcat", SMALL_DCAT)}


def _spec(name: str, kwargs: dict, tasks: dict[str, list[str]], modalities: list[str], in_chans: int,
          task_modality: dict | None = None) -> ModelSpec:
    return ModelSpec(name=name, kwargs=kwargs, tasks=tasks, modalities=modalities,
                     preprocessing=Preprocessing(img_size=PX, resize="resize", normalize="zscore",
                                                 in_chans={m: in_chans for m in modalities}),
                     task_modality=task_modality or {})


@torch.no_grad()
def test_one_head_per_task_each_reading_only_its_own_modality():
    model = dualfuse.create_model("multitask", trunk_kwargs={"backbone": "resnet18"}, in_chans=1,
                                  modalities=["xray", "mri", "skin"], num_classes=[2, 4, 7]).eval()
    images = {m: torch.randn(3, 1, PX, PX) for m in model.modalities}
    out = model(images)
    assert {task: tuple(logits.shape) for task, logits in out.items()} == {
        "xray_label": (3, 2), "mri_label": (3, 4), "skin_label": (3, 7)}
    assert model.task_modality == {"xray_label": "xray", "mri_label": "mri", "skin_label": "skin"}
    assert model.forward_head(model.forward_features(images), pre_logits=True).shape == (3, 3 * 512)
    changed = model({**images, "mri": torch.randn(3, 1, PX, PX)})
    assert torch.equal(changed["xray_label"], out["xray_label"]) and torch.equal(changed["skin_label"], out["skin_label"])
    assert not torch.equal(changed["mri_label"], out["mri_label"])
    # One trunk: every parameter outside the heads is shared by all modalities.
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"trunk", "heads"}


def test_grad_cam_of_a_task_is_the_plain_model_s_map_of_its_own_modality():
    """The shared trunk runs once per modality; each modality's map is its own pass, as a plain model's."""
    model = dualfuse.create_model("multitask", trunk_kwargs={"backbone": "resnet18"}, in_chans=1,
                                  modalities=["xray", "mri"], num_classes=[2, 4]).eval()
    images = {m: torch.randn(2, 1, 64, 64) for m in model.modalities}
    maps = class_activation_maps(model, images, target_class=[0, 1], task="mri_label")
    plain = dualfuse.create_model("timm_classifier", backbone="resnet18", in_chans=1, num_classes=4).eval()
    state = {k[len(TRUNK_PREFIX):]: v for k, v in model.state_dict().items() if k.startswith(TRUNK_PREFIX)}
    state.update({k.replace("heads.mri_label.", "head."): v for k, v in model.state_dict().items()
                  if k.startswith("heads.mri_label.")})
    plain.load_state_dict(state)
    expected = class_activation_maps(plain, images["mri"], target_class=[0, 1])["image"]
    assert maps["mri"].max() > 0 and np.allclose(maps["mri"], expected, atol=1e-5)
    assert not maps["xray"].any()  # the task never reads the other modality


def test_tasks_named_after_the_modalities_pair_by_name_whatever_their_order():
    model = dualfuse.create_model("multitask", modalities=["a", "b"], num_classes={"b_label": 3, "a_label": 2})
    assert model.tasks == {"a_label": 2, "b_label": 3} and model.task_modality == {"a_label": "a", "b_label": "b"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"trunk": "resnet_unknown"}, "trunk 'resnet_unknown' is not a registered single-image model; use one of "
                                  "concat_fusion, dcat, timm_classifier"),
    ({"trunk": "drifa_net"}, "trunk 'drifa_net' is not a registered single-image model"),
    ({"trunk": "multitask"}, "trunk 'multitask' is not a registered single-image model"),
    ({"trunk_kwargs": {"in_chans": 1}}, "trunk_kwargs.in_chans is set by multitask itself"),
    ({"in_chans": [1, 3]}, "one trunk takes one channel count"),
    ({"num_classes": {"only": 2}}, "one task per modality"),
])
def test_bad_arguments_fail_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        dualfuse.create_model("multitask", **kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("trunk", list(TRUNKS))
def test_init_from_a_multitask_model_loads_every_trunk_tensor_into_the_plain_model(trunk, tmp_path):
    """RGB multitask source, grey plain target: every trunk tensor equal (stems adapted), the head new."""
    name, trunk_kwargs = TRUNKS[trunk]
    tasks = {"xray_label": ["normal", "pneumonia"], "skin_label": [f"c{i}" for i in range(7)]}
    source_spec = _spec("multitask", {"trunk": name, "trunk_kwargs": trunk_kwargs, "in_chans": 3,
                                      "modalities": ["xray", "skin"], "num_classes": {t: len(c) for t, c in tasks.items()}},
                        tasks, ["xray", "skin"], 3, {"xray_label": "xray", "skin_label": "skin"})
    torch.manual_seed(1)
    source = source_spec.build()
    save_model(tmp_path, source, source_spec)
    pretrained = {k[len(TRUNK_PREFIX):]: v for k, v in source.state_dict().items() if k.startswith(TRUNK_PREFIX)}

    target_spec = _spec(name, {**trunk_kwargs, "in_chans": 1, "num_classes": {"label": 2}},
                        {"label": ["benign", "malignant"]}, ["image"], 1)
    torch.manual_seed(2)
    target = target_spec.build()
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, target_spec, tmp_path)

    heads = set(head_parameter_names(target))
    after = target.state_dict()
    assert set(report.loaded) | set(report.adapted) == set(after) - heads == set(pretrained)
    assert report.adapted and all(pretrained[n].shape[1] == 3 and after[n].shape[1] == 1 for n in report.adapted)
    for tensor in report.loaded:
        assert torch.equal(after[tensor], pretrained[tensor]), tensor
    for tensor in report.adapted:
        assert torch.equal(after[tensor], adapt_channels(pretrained[tensor], 1)), tensor
    assert set(report.new) == heads and all(torch.equal(after[n], fresh[n]) for n in heads)
    assert {n.split(".")[1] for n in report.skipped} == set(tasks)  # the source's heads: other tasks
    assert all("multitask source" in reason for reason in report.skipped.values())


def test_init_from_a_multitask_model_of_another_trunk_fails_in_one_line(tmp_path):
    spec = _spec("multitask", {"trunk_kwargs": {"backbone": "resnet18"}, "modalities": ["a", "b"]},
                 {"a_label": ["x", "y"], "b_label": ["x", "y"]}, ["a", "b"], 3)
    save_model(tmp_path, spec.build(), spec)
    target = _spec("dcat", {**SMALL_DCAT, "num_classes": {"label": 2}}, {"label": ["x", "y"]}, ["image"], 3)
    with pytest.raises(ValueError, match="multitask run whose trunk is 'timm_classifier'") as error:
        transfer_weights(target.build(), target, tmp_path)
    assert "\n" not in str(error.value)


def test_zip_mode_pretraining_writes_its_run_and_a_plain_model_starts_from_it(data_root, tmp_path):
    """Two real sources, a couple of batches: the run folder, then its trunk in a grey timm_classifier."""
    sources = {"breastmnist": {"format": "medmnist", "path": str(data_root / "medmnist" / "breastmnist.npz"),
                               "channels": 1},
               "pneumoniamnist": {"format": "medmnist", "path": str(data_root / "medmnist" / "pneumoniamnist.npz"),
                                  "channels": 1}}
    kwargs = {"trunk": "timm_classifier", "trunk_kwargs": {"backbone": "resnet18"}, "in_chans": 3}
    config, _ = parse_run_args([
        "--model.name", "multitask", "--model.kwargs", json.dumps(kwargs), "--data.mode", "zip",
        "--data.sources", json.dumps(sources), "--data.img_size", str(PX), "--data.normalize", "zscore",
        "--data.batch_size", "16", "--data.num_workers", "0", "--data.max_train_cases", "48",
        "--data.max_eval_cases", "24", "--train.epochs", "1", "--train.limit_train_batches", "2",
        "--train.progress_bar", "false", "--eval.splits", '["val"]', "--eval.n_bootstrap", "20",
        "--output", str(tmp_path / "pretrain")])
    summary = train(config)
    run = tmp_path / "pretrain"
    spec = json.loads((run / "model" / "model.json").read_text())
    assert spec["model"]["name"] == "multitask" and spec["modalities"] == ["breastmnist", "pneumoniamnist"]
    assert spec["preprocessing"]["in_chans"] == {"breastmnist": 3, "pneumoniamnist": 3}  # grey replicated
    assert set(summary["tasks"]) == {"breastmnist_label", "pneumoniamnist_label"}
    assert all((run / f"split-{name}.csv").is_file() for name in sources)

    target = _spec("timm_classifier", {"backbone": "resnet18", "in_chans": 1, "num_classes": {"label": 2}},
                   {"label": ["malignant", "normal_or_benign"]}, ["image"], 1)
    model = target.build()
    report = transfer_weights(model, target, run)
    assert set(report.new) == set(head_parameter_names(model))
    assert len(report.loaded) + len(report.adapted) == len(model.state_dict()) - len(report.new)
    assert report.adapted == ["backbone.conv1.weight"]


def _pretrain_config_stacks() -> list[tuple[Path, ...]]:
    """Every trunk config alone, and every overlay (a file without a model, e.g. longer.yaml) laid over
    the ResNet-18 trunk, as benchmarks/pretrain.py lays it."""
    files = sorted(CONFIGS.glob("*.yaml"))
    trunks = [path for path in files if "model:" in path.read_text()]
    return [(path,) for path in trunks] + [(CONFIGS / "resnet18.yaml", path) for path in files if path not in trunks]


@pytest.mark.parametrize("paths", _pretrain_config_stacks(), ids=lambda paths: "+".join(p.stem for p in paths))
def test_pretrain_configs_train_one_trunk_on_every_labelled_set(paths, data_root, monkeypatch):
    monkeypatch.setenv("DUALFUSE_DATA", str(data_root))
    config, _ = parse_run_args([arg for path in paths for arg in ("--config", str(path))])
    assert config.model.name == "multitask" and config.data.mode == "zip" and "test" not in config.eval.splits
    assert set(config.data.sources) == {"pneumoniamnist", "breastmnist", "brain_mri", "lung_ct", "tb", "ham10000",
                                        "herlev"}
    for name, source in config.data.sources.items():
        assert expand_path(source.path, name).exists(), source.path
        assert source.channels in (1, 3), f"{name}: say whether the set is grey or RGB"
    assert config.data.sources["ham10000"].format == "manifest"  # patient_id (lesion id) groups its split
    modalities = sorted(config.data.sources)
    with torch.device("meta"):
        model = dualfuse.create_model("multitask", **config.model.kwargs, modalities=modalities)
    assert model.modalities == modalities and model.in_chans == [3] * len(modalities)
