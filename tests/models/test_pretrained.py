"""Pretrained backbone weights: local files (offline) load exactly; hub weights are requested from timm."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

import dualfuse
from dualfuse.models import backbone as backbone_module


def save_random_weights(name: str, path, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    state = timm.create_model(name, **kwargs).state_dict()
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("suffix", (".safetensors", ".pth"))
def test_local_file_loads_into_timm_classifier(tmp_path, suffix):
    path = tmp_path / f"resnet18{suffix}"
    state = save_random_weights("resnet18", path)
    model = dualfuse.create_model("timm_classifier", backbone="resnet18", pretrained=path)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_local_file_adapts_stem_to_one_channel(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    state = save_random_weights("resnet18", path)
    model = dualfuse.create_model("timm_classifier", backbone="resnet18", pretrained=str(path), in_chans=1)
    assert torch.allclose(model.backbone.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_dcat_takes_one_local_file_per_backbone(tmp_path):
    eff_state = save_random_weights("efficientnet_b4", tmp_path / "b4.safetensors")
    res_state = save_random_weights("resnet34", tmp_path / "r34.pth")
    model = dualfuse.create_model(
        "dcat", pretrained={"efficientnet_b4": tmp_path / "b4.safetensors", "resnet34": tmp_path / "r34.pth"}
    )
    assert torch.equal(model.eff.stages[0].conv_stem.weight, eff_state["conv_stem.weight"])
    assert torch.equal(model.eff.stages[1].blocks_3[0].conv_pw.weight, eff_state["blocks.3.0.conv_pw.weight"])
    assert torch.equal(model.res.stages[1].layer3[0].conv1.weight, res_state["layer3.0.conv1.weight"])


def test_drifa_timm_backbone_local_file(tmp_path):
    state = save_random_weights("resnet18", tmp_path / "r18.safetensors")
    model = dualfuse.create_model("drifa_net", backbone="resnet18", pretrained=tmp_path / "r18.safetensors")
    for branch in model.branches:
        assert torch.equal(branch.stages[0].conv1.weight, state["conv1.weight"])


def test_missing_and_mismatched_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained weights for resnet18 not found: .*nope.pth"):
        dualfuse.create_model("timm_classifier", backbone="resnet18", pretrained=tmp_path / "nope.pth")
    save_random_weights("resnet18", tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18.pth: weights do not fit backbone resnet34"):
        dualfuse.create_model("timm_classifier", backbone="resnet34", pretrained=tmp_path / "r18.pth")


def test_pretrained_true_asks_timm_for_hub_weights(monkeypatch):
    calls = []
    real_create = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(backbone_module.timm, "create_model", spy)
    dualfuse.create_model("dcat", pretrained=True)
    assert calls == [("efficientnet_b4", True), ("resnet34", True)]
