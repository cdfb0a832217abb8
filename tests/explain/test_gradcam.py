"""Grad-CAM maps for every model (one per modality for DRIFA-Net), embeddings and t-SNE."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dualfuse
from dualfuse.explain.embeddings import fused_features, tsne_map
from dualfuse.explain.gradcam import class_activation_maps
from dualfuse.explain.overlays import display_image, overlay, safe_name

SMALL_DCAT = dict(embed_dim=32, num_heads=2)
MODELS = {  # id: (registry name, kwargs, expected map names)
    "dcat": ("dcat", dict(in_chans=1, **SMALL_DCAT), ["image"]),
    "resnet18": ("timm_classifier", dict(backbone="resnet18", in_chans=3), ["image"]),
    "efficientnet_b0": ("timm_classifier", dict(backbone="efficientnet_b0", in_chans=1), ["image"]),
    "concat_shared": ("concat_fusion", dict(backbones=("resnet18", "efficientnet_b0"), in_chans=1), ["image"]),
    "concat_per_modality": ("concat_fusion", dict(backbones=("resnet18", "resnet18"), modalities=["xray", "ct"],
                                                  in_chans=[1, 3]), ["xray", "ct"]),
    "drifa_rra18": ("drifa_net", dict(modalities=["mri", "ct"], in_chans=1, num_classes={"tumour": 4, "ct": 3}),
                    ["mri", "ct"]),
    "drifa_timm": ("drifa_net", dict(modalities=["t1", "t2", "flair"], in_chans=1, backbone="resnet18"),
                   ["t1", "t2", "flair"]),
}


def _inputs(model, size: int, batch: int = 2):
    if model.multi_input:
        return {m: torch.randn(batch, c, size, size) for m, c in zip(model.modalities, model.in_chans)}
    return torch.randn(batch, model.in_chans, size, size)


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("model_id", list(MODELS))
def test_maps_have_input_size_are_finite_and_one_per_modality(model_id, size):
    name, kwargs, expected = MODELS[model_id]
    model = dualfuse.create_model(name, **kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = class_activation_maps(model, _inputs(model, size), target_class=[0, 1])
    assert list(maps) == expected
    for cams in maps.values():
        assert cams.shape == (2, size, size)
        assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    # Explaining a model changes nothing about it (BatchNorm statistics included).
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_default_targets_are_the_documented_layers():
    dcat = dualfuse.create_model("dcat", **SMALL_DCAT)
    assert dcat.cam_target_layers() == {"image": [f.refine for f in dcat.fusions]}
    drifa = dualfuse.create_model("drifa_net", modalities=["a", "b"])
    layers = drifa.cam_target_layers()
    assert list(layers) == ["a", "b"]
    assert layers["a"] == [drifa.branches[0].stages[-1]] and layers["b"] == [drifa.branches[1].stages[-1]]
    resnet = dualfuse.create_model("timm_classifier", backbone="resnet18")
    assert resnet.cam_target_layers() == {"image": [resnet.backbone.layer4]}
    effnet = dualfuse.create_model("timm_classifier", backbone="efficientnet_b0")
    assert effnet.cam_target_layers() == {"image": [effnet.backbone.blocks[-1]]}
    shared = dualfuse.create_model("concat_fusion", backbones=("resnet18", "efficientnet_b0"))
    assert shared.cam_target_layers() == {"image": [shared.trunks[0].layer4, shared.trunks[1].blocks[-1]]}
    per_modality = dualfuse.create_model("concat_fusion", backbones=("resnet18", "resnet18"), modalities=["x", "y"])
    assert per_modality.cam_target_layers() == {"x": [per_modality.trunks[0].layer4],
                                                "y": [per_modality.trunks[1].layer4]}


def test_explicit_target_layers_override_the_models_own():
    model = dualfuse.create_model("timm_classifier", backbone="resnet18", in_chans=1)
    x = torch.randn(2, 1, 64, 64)
    maps = class_activation_maps(model, x, target_class=0,
                                 target_layers={"layer3": [model.backbone.layer3], "layer4": [model.backbone.layer4]})
    assert list(maps) == ["layer3", "layer4"]
    default = class_activation_maps(model, x, target_class=0)
    np.testing.assert_allclose(maps["layer4"], default["image"], atol=1e-6)
    assert not np.allclose(maps["layer3"], maps["layer4"])


@pytest.mark.parametrize("method", ["gradcam++", "layercam", "eigencam"])
def test_other_cam_methods_run(method):
    model = dualfuse.create_model("timm_classifier", backbone="resnet18", in_chans=1)
    maps = class_activation_maps(model, torch.randn(2, 1, 64, 64), method=method)
    assert maps["image"].shape == (2, 64, 64) and np.isfinite(maps["image"]).all()


def test_bad_arguments_fail_clearly():
    model = dualfuse.create_model("timm_classifier", backbone="resnet18", in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(ValueError, match="unknown CAM method 'magic'"):
        class_activation_maps(model, x, method="magic")
    with pytest.raises(ValueError, match="3 entries for 2 cases"):
        class_activation_maps(model, x, target_class=[0, 1, 1])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        class_activation_maps(model, torch.randn(1, 32, 32))
    drifa = dualfuse.create_model("drifa_net", modalities=["a", "b"], in_chans=1)
    with pytest.raises(ValueError, match=r"missing modalities \['b'\]"):
        class_activation_maps(drifa, {"a": torch.randn(1, 1, 32, 32)})
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        class_activation_maps(drifa, _inputs(drifa, 32, 1), task="nope")


@pytest.mark.parametrize("model_id", ["dcat", "drifa_rra18", "concat_per_modality"])
def test_fused_features_are_what_the_heads_read(model_id):
    name, kwargs, _ = MODELS[model_id]
    model = dualfuse.create_model(name, **kwargs).eval()
    x = _inputs(model, 32, 3)
    features = fused_features(model, x)
    assert features.shape == (3, model.num_features)
    with torch.no_grad():
        logits = model(x)
    assert list(logits) == list(model.tasks)
    for task in model.tasks:
        head = model.heads[task] if hasattr(model, "heads") else model.head
        torch.testing.assert_close(head(features), logits[task])


def test_tsne_map_shape_and_separation():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (40, 64)), rng.normal(6, 1, (40, 64))])
    coords = tsne_map(features, seed=0)
    assert coords.shape == (80, 2) and np.isfinite(coords).all()
    # Two well-separated clusters stay separated: every point is nearer its own cluster's centre.
    centres = coords[:40].mean(0), coords[40:].mean(0)
    own = np.linalg.norm(coords[:40] - centres[0], axis=1) < np.linalg.norm(coords[:40] - centres[1], axis=1)
    assert own.all()
    with pytest.raises(ValueError, match="at least 5"):
        tsne_map(features[:3])


def test_display_and_overlay():
    grey = torch.linspace(-2, 2, 16).view(1, 4, 4)
    picture = display_image(grey, "zscore")
    assert picture.shape == (4, 4, 3) and picture.min() == 0 and picture.max() == 1
    rgb = torch.zeros(3, 4, 4)  # ImageNet-normalised zeros are the ImageNet mean colour
    np.testing.assert_allclose(display_image(rgb, "imagenet")[0, 0], [0.485, 0.456, 0.406], atol=1e-6)
    blended = overlay(picture, np.ones((4, 4), np.float32))
    assert blended.dtype == np.uint8 and blended.shape == (4, 4, 3)
    assert safe_name("a/b c.png#3") == "a_b_c.png_3"
