"""Class activation maps for every dualfuse model, through the `grad-cam` library.

Each model names its own target layers (`DualfuseModel.cam_target_layers`): DCAT the refined
fusion maps of every scale, DRIFA-Net the last stage of each modality's branch (one map per
modality), the baselines their trunks' last stages. Maps come back at the model's input size, in
[0, 1], for the class asked (default: the predicted class). Multi-input models are wrapped so the
library sees one tensor (modalities stacked along channels) and one task's logits.
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


def model_modalities(model: nn.Module) -> list[str] | None:
    """The modality names a multi-input model takes, `None` for a single-image model."""
    return list(model.modalities) if model.multi_input else None


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
        task = self.task or next(iter(outputs))
        if task not in outputs:
            raise ValueError(f"unknown task {task!r}; the model predicts {list(outputs)}")
        return outputs[task]


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
    # A task that reads one modality only (multitask models) has no gradient on the others: empty maps.
    reads = getattr(model, "task_modality", None)
    own = reads.get(task or next(iter(reads))) if reads else None
    maps = {}
    for name, layers in (target_layers or model.cam_target_layers()).items():
        if own is not None and name != own:
            maps[name] = np.zeros((len(x), *x.shape[-2:]), dtype=np.float32)
            continue
        with CAM_METHODS[method](model=wrapped, target_layers=list(layers)) as cam:
            maps[name] = np.nan_to_num(cam(input_tensor=x, targets=targets)).astype(np.float32)
    return maps
