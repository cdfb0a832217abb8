"""Fine-tuning from another model's weights (`model.init_from`): what loads, what adapts, what stays new."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import breast_args
from timm.models import adapt_input_conv

from dualfuse.api import train
from dualfuse.config import ConfigError, parse_run_args
from dualfuse.models.saved import CheckpointError, save_model
from dualfuse.models.spec import ModelSpec, Preprocessing
from dualfuse.models.transfer import adapt_channels, head_parameter_names, transfer_weights
from dualfuse.training.task import ClassificationTask

SMALL = {"embed_dim": 32, "num_heads": 4, "pretrained": False}


def _spec(name="dcat", in_chans=1, classes=("a", "b"), task="label", **kwargs) -> ModelSpec:
    kwargs = {**(SMALL if name == "dcat" else {}), **kwargs, "in_chans": in_chans,
              "num_classes": {task: len(classes)}}
    return ModelSpec(name=name, kwargs=kwargs, tasks={task: list(classes)}, modalities=["image"],
                     preprocessing=Preprocessing(img_size=32, resize="resize", normalize="zscore",
                                                 in_chans={"image": in_chans}))


@pytest.fixture(scope="module")
def source(module_tmp):
    """A saved grey-scale 2-class DCAT (model folder with model.json)."""
    folder = module_tmp("source")
    torch.manual_seed(1)
    spec = _spec()
    model = spec.build()
    save_model(folder, model, spec)
    return folder, model.state_dict()


def test_same_classes_load_everything_including_the_head(source):
    folder, state = source
    torch.manual_seed(2)
    spec = _spec()
    model = spec.build()
    report = transfer_weights(model, spec, folder)
    assert not report.new and not report.adapted and len(report.loaded) == len(state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_rgb_target_with_new_classes_adapts_the_stems_and_reinitialises_the_head(source):
    folder, state = source
    torch.manual_seed(3)
    spec = _spec(in_chans=3, classes=("x", "y", "z"))
    model = spec.build()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = transfer_weights(model, spec, folder / "model.safetensors")
    after = model.state_dict()
    heads = set(head_parameter_names(model))
    assert report.adapted, "both trunks' first convolutions take 1 channel in the source and 3 here"
    for name in report.adapted:
        assert state[name].shape[1] == 1 and after[name].shape[1] == 3
        assert torch.allclose(after[name], state[name].repeat(1, 3, 1, 1) / 3)
        grey = torch.randn(1, 1, 9, 9)  # the RGB copy of a grey image gets the source's response
        assert torch.allclose(torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), after[name]),
                              torch.nn.functional.conv2d(grey, state[name]), atol=1e-5)
    assert set(report.new) == heads  # only the head: other shapes are equal
    assert all("classes differ" in reason for reason in report.new.values())
    for name in heads:
        assert torch.equal(after[name], fresh[name]), "a head for new classes keeps its fresh initialisation"
    for name in report.loaded:
        assert torch.equal(after[name], state[name])
    statuses = {row["status"]: row["tensors"] for row in report.rows()}
    assert statuses["loaded"] == len(report.loaded) and statuses["new"] == len(heads)


def test_rgb_source_to_grey_target_sums_the_colour_filters():
    rgb = torch.randn(8, 3, 3, 3)
    assert torch.allclose(adapt_channels(rgb, 1), adapt_input_conv(1, rgb))
    assert torch.allclose(adapt_channels(rgb, 1), rgb.sum(dim=1, keepdim=True))


def test_same_number_of_classes_with_other_names_is_a_new_task(source):
    folder, _ = source
    spec = _spec(classes=("normal", "tuberculosis"))
    report = transfer_weights(spec.build(), spec, folder)
    assert set(report.new) == set(head_parameter_names(spec.build()))


def test_a_bare_state_dict_loads_the_trunk_but_never_a_head_of_unknown_classes(source, tmp_path):
    _, state = source
    torch.save(state, tmp_path / "weights.pt")
    spec = _spec()
    model = spec.build()
    report = transfer_weights(model, spec, tmp_path / "weights.pt")
    assert set(report.new) == set(head_parameter_names(model))
    assert all("unknown" in reason for reason in report.new.values())
    assert len(report.loaded) == len(state) - len(report.new)


def test_weights_that_fit_nothing_or_hold_nan_fail_in_one_line(source, tmp_path):
    folder, state = source
    other = _spec(name="timm_classifier", backbone="resnet18")
    with pytest.raises(CheckpointError, match="no tensor of .* fits model 'timm_classifier'") as error:
        transfer_weights(other.build(), other, folder)
    assert "\n" not in str(error.value)
    broken = dict(state)
    name = next(k for k, v in broken.items() if v.is_floating_point())
    broken[name] = torch.full_like(broken[name], float("nan"))
    torch.save(broken, tmp_path / "nan.pt")
    spec = _spec()
    with pytest.raises(CheckpointError, match="NaN or inf"):
        transfer_weights(spec.build(), spec, tmp_path / "nan.pt")


def test_missing_init_from_is_a_config_error_naming_the_key(tmp_path, data_root):
    with pytest.raises(ConfigError, match="model.init_from .* does not exist"):
        parse_run_args(breast_args(data_root, tmp_path / "run", "--model.init_from", str(tmp_path / "nope")))
    assert not (tmp_path / "run").exists()


def test_freeze_epochs_holds_the_transferred_trunk_and_trains_the_head():
    """LR 0 for the trunk's groups during the frozen steps, the configured LR after; the head trains throughout."""
    spec = _spec()
    model = spec.build()
    transferred = [n for n in model.state_dict() if n not in head_parameter_names(model)]
    train_config = {"lr": 1e-3, "backbone_lr": 1e-4, "weight_decay": 0.0, "optimizer": "adamw", "scheduler": "none",
                    "warmup_epochs": 0.0, "min_lr": 1e-6, "freeze_epochs": 2, "seed": 0}
    task = ClassificationTask(spec.to_dict(), train_config, transferred=transferred)

    class _Trainer:
        estimated_stepping_batches = 40
        max_epochs = 4

    task.trainer = _Trainer()
    (optimizer,), (schedule,) = task.configure_optimizers()
    scheduler = schedule["scheduler"]
    head_ids = {id(p) for p in task.model.head.parameters()}
    lrs = []
    for _ in range(40):
        lrs.append([(any(id(p) in head_ids for p in g["params"]), g["lr"]) for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for step, groups in enumerate(lrs):
        for is_head, lr in groups:
            expected = 1e-3 if is_head else (0.0 if step < 20 else 1e-4)
            assert lr == pytest.approx(expected), (step, is_head)


def test_fine_tuning_run_starts_from_the_source_run(data_root, tmp_path):
    """A real (short) BreastMNIST run, then a run initialised from it: table in metrics.json, weights used."""
    first, _ = parse_run_args(breast_args(data_root, tmp_path / "first", "--train.epochs", "1",
                                          "--train.limit_train_batches", "2"))
    train(first)
    reports = []
    second, _ = parse_run_args(breast_args(data_root, tmp_path / "second", "--train.epochs", "1",
                                           "--train.limit_train_batches", "2", "--train.freeze_epochs", "1",
                                           "--model.init_from", str(tmp_path / "first")))
    summary = train(second, on_transfer=reports.append)
    assert len(reports) == 1 and not reports[0].new  # same model, same classes: everything loads
    saved = json.loads((tmp_path / "second" / "metrics.json").read_text())["init_from"]
    assert saved["loaded"] == len(reports[0].loaded) and summary["init_from"] == saved
    # One frozen epoch: the trunk is the first run's, bit for bit; the head moved.
    from dualfuse.models.saved import load_model

    a, _ = load_model(tmp_path / "first" / "model")
    b, _ = load_model(tmp_path / "second" / "model")
    heads = set(head_parameter_names(a))
    first_state, second_state = a.state_dict(), b.state_dict()
    trunk = [n for n, _ in a.named_parameters() if n not in heads]
    assert all(torch.equal(first_state[n], second_state[n]) for n in trunk)
    assert any(not torch.equal(first_state[n], second_state[n]) for n in heads)


def test_multitask_heads_load_per_task_by_class_list(tmp_path):
    """DRIFA-Net heads: the task with the same classes loads, the task with other classes starts fresh."""
    def drifa(tasks: dict[str, list[str]]) -> ModelSpec:
        return ModelSpec(name="drifa_net", kwargs={"in_chans": 1, "modalities": ["mri", "xray"],
                                                   "num_classes": {t: len(c) for t, c in tasks.items()}},
                         tasks=tasks, modalities=["mri", "xray"],
                         preprocessing=Preprocessing(img_size=32, resize="resize", normalize="zscore",
                                                     in_chans={"mri": 1, "xray": 1}),
                         task_modality={"mri_label": "mri", "xray_label": "xray"})

    source = drifa({"mri_label": ["a", "b", "c", "d"], "xray_label": ["normal", "pneumonia"]})
    torch.manual_seed(4)
    save_model(tmp_path, source.build(), source)
    target = drifa({"mri_label": ["a", "b", "c", "d"], "xray_label": ["normal", "tuberculosis"]})
    report = transfer_weights(target.build(), target, tmp_path)
    assert {n.split(".")[1] for n in report.new} == {"xray_label"}
    assert any(n.startswith("heads.mri_label.") for n in report.loaded)
