"""Class activation maps for every dualfuse model, through the `grad-cam` library.

Default target layers (the map a reader expects to see for each model):

- `dcat`: the enhanced-CBAM output of every fusion scale (strides 8 and 16), averaged: the fused,
  refined maps that the head pools.
- `drifa_net`: per modality, the last stage of that modality's branch (before the final MIFA):
  one map per modality.
- `timm_classifier`: the backbone's last feature stage (timm's `feature_info[-1]`).
- `concat_fusion`: each trunk's last stage; averaged into one map when the trunks share one image,
  one map per modality when they see different ones.

Maps come back at the model's input size, in [0, 1], for the class asked (default: the predicted
class). Multi-input models are wrapped so the library sees one tensor (modalities stacked along
channels) and one task's logits.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dualfuse.explain import CAM_METHOD_NAMES

CAM_METHODS = dict(zip(CAM_METHOD_NAMES, (GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM, EigenCAM)))
IMAGE_MAP = "image"  # the map name of single-input models


def _last_timm_stage(backbone: nn.Module) -> nn.Module:
    return backbone.get_submodule(backbone.feature_info[-1]["module"])


def _last_trunk_stage(trunk: nn.Module) -> nn.Module:
    """A whole timm backbone, or `Sequential(FeatureTaps, pool)` cut at a tap."""
    if isinstance(trunk, nn.Sequential):
        return trunk[0].stages[-1]
    return _last_timm_stage(trunk)


def default_target_layers(model: nn.Module) -> dict[str, list[nn.Module]]:
    """`{map name: layers}`: one entry per modality for multi-input models, else one `"image"` map."""
    if hasattr(model, "branches"):  # DRIFA-Net
        return {name: [branch.stages[-1]] for name, branch in zip(model.modalities, model.branches)}
    if hasattr(model, "fusions") and hasattr(model, "eff"):  # DCAT
        return {IMAGE_MAP: [fusion.refine for fusion in model.fusions]}
    if hasattr(model, "trunks"):  # concat fusion
        layers = [_last_trunk_stage(trunk) for trunk in model.trunks]
        if model.modalities is None:
            return {IMAGE_MAP: layers}
        return {name: [layer] for name, layer in zip(model.modalities, layers)}
    if hasattr(model, "backbone") and hasattr(model.backbone, "feature_info"):  # timm classifier
        return {IMAGE_MAP: [_last_timm_stage(model.backbone)]}
    raise ValueError(f"no default Grad-CAM target layer for {type(model).__name__}; pass target_layers")


def model_modalities(model: nn.Module) -> list[str] | None:
    """The modality names a multi-input model takes, `None` for a single-image model."""
    names = getattr(model, "modalities", None)
    return list(names) if names else None


class TaskLogits(nn.Module):
    """One tensor in, one task's logits out: what the `grad-cam` library expects.

    For a multi-input model the tensor is the modalities stacked along channels
    (`(B, sum of in_chans, H, W)`), split back before the model sees them.
    """

    def __init__(self, model: nn.Module, task: str | None = None):
        super().__init__()
        self.model = model
        self.task = task
        self.modalities = model_modalities(model)
        chans = model.in_chans
        self.channels = list(chans) if isinstance(chans, (list, tuple)) else [chans] * len(self.modalities or [0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.modalities is None:
            outputs = self.model(x)
        else:
            outputs = self.model(dict(zip(self.modalities, torch.split(x, self.channels, dim=1))))
        if isinstance(outputs, Mapping):
            task = self.task or next(iter(outputs))
            if task not in outputs:
                raise ValueError(f"unknown task {task!r}; the model predicts {list(outputs)}")
            return outputs[task]
        return outputs


def stack_inputs(model: nn.Module, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The single tensor `TaskLogits` takes: the image, or the modalities stacked along channels."""
    modalities = model_modalities(model)
    if modalities is None:
        return inputs
    if not isinstance(inputs, Mapping):
        inputs = dict(zip(modalities, inputs))
    missing = [m for m in modalities if m not in inputs]
    if missing:
        raise ValueError(f"missing modalities {missing}; the model takes {modalities}")
    return torch.cat([inputs[m] for m in modalities], dim=1)


def class_activation_maps(model: nn.Module, inputs: torch.Tensor | Mapping[str, torch.Tensor],
                          target_class: int | Sequence[int] | None = None, task: str | None = None,
                          method: str = "gradcam",
                          target_layers: Mapping[str, Sequence[nn.Module]] | None = None) -> dict[str, np.ndarray]:
    """`{map name: (B, H, W) float32 maps in [0, 1]}` for each case's `target_class`.

    `target_class` is one class for every case, one per case, or `None` (each case's predicted
    class). The model is put in eval mode; nothing about it changes.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {sorted(CAM_METHODS)}")
    wrapped = TaskLogits(model, task).eval()
    x = stack_inputs(model, inputs)
    if x.ndim != 4:
        raise ValueError(f"inputs must be (B, C, H, W) images, got shape {tuple(x.shape)}")
    device = next(model.parameters()).device
    x = x.to(device)
    if target_class is None:
        with torch.no_grad():
            classes = wrapped(x).argmax(dim=1).tolist()
    elif isinstance(target_class, int):
        classes = [target_class] * len(x)
    else:
        classes = [int(c) for c in target_class]
    if len(classes) != len(x):
        raise ValueError(f"target_class has {len(classes)} entries for {len(x)} cases")
    targets = [ClassifierOutputTarget(c) for c in classes]
    maps = {}
    for name, layers in (target_layers or default_target_layers(model)).items():
        with CAM_METHODS[method](model=wrapped, target_layers=list(layers)) as cam:
            maps[name] = np.nan_to_num(cam(input_tensor=x, targets=targets)).astype(np.float32)
    return maps
