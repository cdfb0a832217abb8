"""Every model gives logits of the right shape at every supported input size and channel count."""
from __future__ import annotations

import functools

import pytest
import torch

import dualfuse
from dualfuse.models.summary import example_inputs

SIZES = (28, 64, 128, 224)
SINGLE_INPUT_MODELS = ("dcat", "timm_classifier", "concat_fusion")


@functools.cache
def cached_model(name: str, **kwargs):
    return dualfuse.create_model(name, **kwargs).eval()


@pytest.mark.parametrize("in_chans", (1, 3))
@pytest.mark.parametrize("img_size", SIZES)
@pytest.mark.parametrize("name", SINGLE_INPUT_MODELS)
@torch.no_grad()
def test_single_input_models(name, img_size, in_chans):
    model = cached_model(name, in_chans=in_chans, num_classes=3)
    out = model(torch.randn(2, in_chans, img_size, img_size))
    assert list(out) == ["label"]
    assert out["label"].shape == (2, 3)
    assert torch.isfinite(out["label"]).all()


@pytest.mark.parametrize("in_chans", (1, 3))
@pytest.mark.parametrize("img_size", SIZES)
@torch.no_grad()
def test_drifa_net_sizes(img_size, in_chans):
    model = cached_model("drifa_net", in_chans=in_chans, num_classes=(4, 3))
    out = model(example_inputs(model, img_size, batch_size=2))
    assert {task: tuple(logits.shape) for task, logits in out.items()} == {"task0": (2, 4), "task1": (2, 3)}


@pytest.mark.parametrize("num_classes", (5, {"mri": 4, "ct": 3}), ids=("one_task", "two_tasks"))
@pytest.mark.parametrize("num_modalities", (1, 2, 4))
@torch.no_grad()
def test_drifa_net_modalities_and_tasks(num_modalities, num_classes):
    model = dualfuse.create_model("drifa_net", modalities=num_modalities, num_classes=num_classes).eval()
    out = model([torch.randn(2, 3, 64, 64) for _ in range(num_modalities)])
    expected = {"label": 5} if num_classes == 5 else num_classes
    assert {task: tuple(logits.shape) for task, logits in out.items()} == {t: (2, n) for t, n in expected.items()}


@torch.no_grad()
def test_drifa_net_accepts_dict_mixed_channels_and_sizes():
    model = dualfuse.create_model("drifa_net", modalities=["t1", "flair"], in_chans=[1, 3], num_classes=2).eval()
    out = model({"flair": torch.randn(2, 3, 96, 96), "t1": torch.randn(2, 1, 64, 64)})
    assert out["label"].shape == (2, 2)


@pytest.mark.parametrize("backbone", ("resnet18", "efficientnet_b0"))
@torch.no_grad()
def test_drifa_net_with_timm_backbone(backbone):
    model = dualfuse.create_model("drifa_net", backbone=backbone, modalities=2, num_classes=3).eval()
    out = model([torch.randn(2, 3, 28, 28), torch.randn(2, 3, 28, 28)])
    assert out["label"].shape == (2, 3)


@torch.no_grad()
def test_concat_fusion_one_backbone_per_modality():
    model = dualfuse.create_model(
        "concat_fusion", backbones=("resnet18", "resnet18"), modalities=["xray", "ct"], in_chans=[1, 3]
    ).eval()
    out = model({"xray": torch.randn(2, 1, 64, 64), "ct": torch.randn(2, 3, 64, 64)})
    assert list(out) == ["label"] and out["label"].shape == (2, 2)


@torch.no_grad()
def test_dcat_small_input_is_upsampled_and_odd_sizes_align():
    model = cached_model("dcat", in_chans=3, num_classes=3)
    eff, res = model.eff(torch.zeros(1, 3, 32, 32)), model.res(torch.zeros(1, 3, 32, 32))
    assert [f.shape[-1] for f in eff] == [4, 2] and [f.shape[-1] for f in res] == [4, 2]
    # 28 px goes through the same path as 32 px; 45 px gives unequal maps that are resized.
    assert model(torch.randn(1, 3, 28, 28))["label"].shape == (1, 3)
    assert model(torch.randn(1, 3, 45, 61))["label"].shape == (1, 3)
