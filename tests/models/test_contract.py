"""The model contract (models/base.py), checked for every registered model.

Each registered model needs at least one tiny configuration in `CONFIGS` (32 px, one channel, small
widths); a model registered without one fails here, so a new model is held to the same contract.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import dualfuse
from dualfuse.models import IMAGE_MAP, DualfuseModel, ModelSpec, PaperReference, Preprocessing
from dualfuse.models.heads import add_logit_offsets, output_bias_names
from dualfuse.models.registry import create_model, list_models, model_class
from dualfuse.models.spec import SpecError
from dualfuse.models.summary import example_inputs

PX, BATCH = 32, 2
SMALL_DCAT = {"in_chans": 1, "embed_dim": 32, "num_heads": 2}

# name → {config id: constructor kwargs}. Kwargs are JSON-shaped (lists, not tuples) so they
# survive a ModelSpec round trip unchanged.
CONFIGS: dict[str, dict[str, dict]] = {
    "concat_fusion": {
        "shared_image": {"backbones": ["resnet18", "efficientnet_b0"], "in_chans": 1, "head_hidden": 16},
        "per_modality": {"backbones": ["resnet18", "resnet18"], "modalities": ["xray", "ct"], "in_chans": [1, 1],
                         "num_classes": {"finding": 3}},
    },
    "dcat": {
        "int_classes": {**SMALL_DCAT, "num_classes": 3},
        "named_task": {**SMALL_DCAT, "num_classes": {"diagnosis": 2}},
    },
    "drifa_net": {
        "rra18_two_tasks": {"modalities": ["mri", "ct"], "in_chans": 1, "num_classes": {"tumour": 4, "grade": 3}},
        "resnet18_head_mc": {"backbone": "resnet18", "modalities": 3, "in_chans": 1, "mc_dropout": "head"},
    },
    "multitask": {
        "resnet18_trunk": {"trunk": "timm_classifier", "trunk_kwargs": {"backbone": "resnet18"}, "in_chans": 1,
                           "modalities": ["xray", "ultrasound"], "num_classes": {"xray_label": 2, "ultrasound_label": 3}},
        "dcat_trunk_fusion_dropout": {"trunk": "dcat", "trunk_kwargs": {"embed_dim": 32, "num_heads": 2,
                                                                      "fusion_drop_rate": 0.1},
                                      "in_chans": 3, "modalities": ["mri", "ct", "skin"],
                                      "num_classes": {"mri_label": 4, "ct_label": 3, "skin_label": 7}},
    },
    "timm_classifier": {
        "resnet18": {"backbone": "resnet18", "in_chans": 1, "num_classes": 3},
    },
}
PAPERS = {"dcat": True, "drifa_net": True, "concat_fusion": False, "multitask": False, "timm_classifier": False}

CASES = [pytest.param((name, config_id), id=f"{name}-{config_id}")
         for name in list_models() for config_id in CONFIGS.get(name, {None: None})]

_built: dict[tuple[str, str], nn.Module] = {}


@pytest.fixture
def case(request) -> tuple[str, dict, nn.Module, object]:
    """(name, kwargs, the model in eval mode, a batch of inputs); models are built once per module."""
    name, config_id = request.param
    if config_id is None:
        pytest.fail(f"model {name!r} is registered but has no tiny config in tests/models/test_contract.py CONFIGS")
    key = (name, config_id)
    if key not in _built:
        torch.manual_seed(0)
        _built[key] = create_model(name, **CONFIGS[name][config_id])
    model = _built[key].eval()
    torch.manual_seed(1)
    return name, CONFIGS[name][config_id], model, example_inputs(model, PX, BATCH)


def with_case(test):
    return pytest.mark.parametrize("case", CASES, indirect=True)(test)


def test_every_registered_model_has_a_config():
    assert set(CONFIGS) == set(list_models())
    assert set(PAPERS) == set(list_models())


@with_case
def test_model_is_a_dualfuse_model_and_its_class_is_known_without_building(case):
    name, kwargs, model, _ = case
    assert isinstance(model, DualfuseModel)
    assert model_class(name) is type(model)
    assert model_class(name) is type(create_model(name, **kwargs))


@with_case
@torch.no_grad()
def test_forward_returns_logits_per_task(case):
    _, kwargs, model, inputs = case
    out = model(inputs)
    assert isinstance(out, dict)
    assert list(out) == list(model.tasks)
    for task, n in model.tasks.items():
        assert isinstance(n, int) and n >= 2
        assert out[task].shape == (BATCH, n), task
        assert torch.isfinite(out[task]).all(), task
    classes = kwargs.get("num_classes", 2)
    expected = {"label": classes} if isinstance(classes, int) else classes
    assert model.tasks == expected


@with_case
@torch.no_grad()
def test_stochastic_after_deterministic_is_forward_in_eval_mode(case):
    _, _, model, inputs = case
    full = model(inputs)
    split = model.forward_stochastic(model.forward_deterministic(inputs))
    assert isinstance(split, dict) and split.keys() == full.keys()
    for task in full:
        assert torch.equal(split[task], full[task]), task


@with_case
@torch.no_grad()
def test_logit_offsets_in_the_output_bias_move_each_tasks_logits_exactly(case):
    """Post-hoc logit adjustment writes into these biases; any layer after them would bend the offsets."""
    _, _, model, inputs = case
    model = copy.deepcopy(model)  # the cached model stays as built
    before = model(inputs)
    offsets = {task: [0.25 * (c + 1) * (-1) ** c for c in range(n)] for task, n in model.tasks.items()}
    add_logit_offsets(model, offsets)
    after = model(inputs)
    for task in model.tasks:
        torch.testing.assert_close(after[task], before[task] + torch.tensor(offsets[task]), rtol=0, atol=1e-5)
    names = output_bias_names(model)
    assert set(names) == set(model.tasks) and all(name in model.state_dict() for name in names.values())


@with_case
@torch.no_grad()
def test_forward_head_pre_logits_is_the_fused_vector(case):
    _, _, model, inputs = case
    features = model.forward_features(inputs)
    fused = model.forward_head(features, pre_logits=True)
    assert isinstance(fused, torch.Tensor) and fused.ndim == 2 and fused.shape[0] == BATCH
    assert fused.shape[1] == model.num_features
    logits = model.forward_head(features)
    full = model(inputs)
    assert isinstance(logits, dict) and logits.keys() == full.keys()
    for task in full:
        torch.testing.assert_close(logits[task], full[task], rtol=0, atol=0)


@with_case
@torch.no_grad()
def test_multi_input_agrees_with_what_forward_accepts(case):
    name, _, model, _ = case
    kind = type(model).inputs
    assert kind in ("image", "modalities", "either")
    if kind != "either":
        assert model.multi_input == (kind == "modalities")
    if model.multi_input:
        assert model.modalities and len(set(model.modalities)) == len(model.modalities)
        images = {m: torch.randn(BATCH, c, PX, PX) for m, c in zip(model.modalities, model.in_chans)}
        by_dict, by_list = model(images), model([images[m] for m in model.modalities])
        assert all(torch.equal(by_dict[t], by_list[t]) for t in model.tasks)
        if len(model.modalities) > 1:
            with pytest.raises(ValueError):
                model(images[model.modalities[0]])
    else:
        assert model.modalities is None
        image = torch.randn(BATCH, model.in_chans, PX, PX)
        assert set(model(image)) == set(model.tasks)
        with pytest.raises(ValueError):
            model({"image": image, "other": image})


@with_case
def test_cam_target_layers_are_submodules_one_map_per_modality(case):
    _, _, model, _ = case
    layers = model.cam_target_layers()
    assert isinstance(layers, dict)
    expected = list(model.modalities) if model.multi_input else [IMAGE_MAP]
    assert list(layers) == expected
    submodules = {id(module) for module in model.modules() if module is not model}
    for map_name, modules in layers.items():
        assert isinstance(modules, list) and modules, map_name
        for module in modules:
            assert isinstance(module, nn.Module), map_name
            assert id(module) in submodules, f"{map_name}: {type(module).__name__} is not a submodule of the model"


@pytest.mark.parametrize("name", list_models())
def test_paper_reference_is_declared_by_the_class(name):
    paper = model_class(name).paper
    if PAPERS.get(name):
        assert isinstance(paper, PaperReference)
        assert paper.citation and paper.url.startswith("https://")
    else:
        assert paper is None


@with_case
def test_model_spec_json_round_trip_rebuilds_the_model(case, tmp_path):
    name, kwargs, model, _ = case
    modalities = list(model.modalities) if model.multi_input else ["image"]
    chans = model.in_chans if model.multi_input else [model.in_chans] * len(modalities)
    spec = ModelSpec(
        name=name, kwargs=dict(kwargs),
        tasks={task: [f"class{i}" for i in range(n)] for task, n in model.tasks.items()},
        modalities=modalities,
        preprocessing=Preprocessing(img_size=PX, resize="resize", normalize="zscore",
                                    in_chans=dict(zip(modalities, chans))),
        task_modality={task: modalities[0] for task in model.tasks} if model.multi_input else {},
    )
    path = tmp_path / "model.json"
    path.write_text(spec.to_json())
    assert json.loads(path.read_text())["format_version"] == 2
    again = ModelSpec.from_json(path)
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    rebuilt = again.build()
    assert type(rebuilt) is type(model) and rebuilt.tasks == model.tasks
    rebuilt.load_state_dict(model.state_dict())  # the same architecture, parameter for parameter


FORMAT_1_DCAT = {"model": {"name": "dcat", "kwargs": {"num_classes": 2}}, "tasks": {"diagnosis": ["a", "b"]},
                 "modalities": ["image"], "format_version": 1}


@pytest.mark.parametrize("via_file", [False, True], ids=["dict", "file"])
@torch.no_grad()
def test_format_1_spec_upgrades_to_named_task(via_file, tmp_path):
    if via_file:
        path = tmp_path / "model.json"
        path.write_text(json.dumps(FORMAT_1_DCAT))
        spec = ModelSpec.from_json(path)
    else:
        spec = ModelSpec.from_dict(FORMAT_1_DCAT)
    assert spec.name == "dcat" and spec.kwargs == {"num_classes": {"diagnosis": 2}}
    assert spec.tasks == {"diagnosis": ["a", "b"]} and spec.modalities == ["image"]
    assert spec.to_dict()["format_version"] == 2
    model = spec.build().eval()
    assert model.tasks == {"diagnosis": 2}
    out = model(torch.randn(1, 3, PX, PX))
    assert list(out) == ["diagnosis"] and out["diagnosis"].shape == (1, 2)
    # The upgrade does not touch its input, and a format-2 spec is read as written.
    assert FORMAT_1_DCAT["model"]["kwargs"] == {"num_classes": 2}
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_format_2_int_num_classes_is_not_renamed():
    data = {**FORMAT_1_DCAT, "format_version": 2}
    assert ModelSpec.from_dict(data).kwargs == {"num_classes": 2}


def test_facade_exports_the_same_registry():
    assert dualfuse.list_models() == list_models()
    assert dualfuse.create_model is create_model
    assert dualfuse.ModelSpec is ModelSpec


def test_logit_offsets_round_trip_and_a_bad_entry_names_the_field(tmp_path):
    data = {**FORMAT_1_DCAT, "format_version": 2, "logit_offsets": {"diagnosis": [0.25, -1]}}
    spec = ModelSpec.from_dict(data)
    assert spec.logit_offsets == {"diagnosis": [0.25, -1.0]}
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert "logit_offsets" not in ModelSpec.from_dict(FORMAT_1_DCAT).to_dict()  # only written when there are some
    path = tmp_path / "model.json"
    for bad in ({"diagnosis": [0.25]}, {"other": [0, 0]}, {"diagnosis": ["a", 0]}, [1, 2]):
        path.write_text(json.dumps({**data, "logit_offsets": bad}))
        with pytest.raises(SpecError, match=r"model\.json: logit_offsets"):
            ModelSpec.from_json(path)
