"""Baselines for honest comparison: one timm CNN, and several CNNs fused by plain concatenation.

Both use the same kind of MC-dropout head as DCAT, so differences in accuracy or calibration come
from the fusion, not the head.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from dualfuse.models.backbone import Pretrained, create_backbone, create_feature_taps, resolve_pretrained
from dualfuse.models.base import IMAGE_MAP, last_feature_stage, single_task
from dualfuse.models.heads import ClassifierHead, SingleHeadModel
from dualfuse.models.inputs import check_image, collect_modalities, modality_names, per_modality, upsample_to_min_size
from dualfuse.models.registry import register_model


class TimmClassifier(SingleHeadModel):
    """Any timm model, globally pooled, with a Dropout → Linear head (MC dropout samples the head).

    Args:
        backbone: timm model name (e.g. `"resnet18"`, `"efficientnet_b4"`).
        pretrained: `True` (timm hub), `False`, or a local weights file.
        head_hidden: 0 for Dropout → Linear; > 0 for DCAT's two-layer head.
        min_input_size: shorter sides below this are upsampled first (stride-32 CNNs at 28 px).
        backbone_kwargs: passed to `timm.create_model` (e.g. `drop_path_rate`).
    """

    def __init__(self, backbone: str = "resnet18", num_classes: int | Mapping[str, int] = 2, in_chans: int = 3,
                 pretrained: Pretrained = False, head_hidden: int = 0, drop_rate: float = 0.3,
                 min_input_size: int = 32, **backbone_kwargs):
        super().__init__()
        self.in_chans = in_chans
        self.task, self.num_classes = single_task(num_classes, "timm_classifier")
        self.tasks = {self.task: self.num_classes}
        self.min_input_size = min_input_size
        self.backbone = create_backbone(backbone, resolve_pretrained(pretrained, backbone), in_chans, **backbone_kwargs)
        self.num_features = self.backbone.num_features
        self.head = ClassifierHead(self.num_features, self.num_classes, head_hidden, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample_to_min_size(check_image(x, self.in_chans), self.min_input_size)
        return self.backbone(x)

    def cam_target_layers(self) -> dict[str, list[nn.Module]]:
        """The backbone's last feature stage (timm's `feature_info[-1]`)."""
        return {IMAGE_MAP: [last_feature_stage(self.backbone)]}



class ConcatFusion(SingleHeadModel):
    """Two or more CNNs, each globally average-pooled, features concatenated: fusion without attention.

    Args:
        backbones: timm model names.
        taps: `None` (each whole backbone) or one module name per backbone to cut it at, e.g.
            `("blocks.3", "layer3")` for the "DCAT without attention" ablation.
        modalities: `None` (every backbone sees the same image) or one modality per backbone (a count
            or names); `forward` then takes a list or dict of images, as DRIFA-Net does.
        pretrained: `True`, `False`, or `{backbone_name: True | False | path}`.
    """

    inputs = "either"

    def __init__(self, backbones: Sequence[str] = ("efficientnet_b4", "resnet34"),
                 num_classes: int | Mapping[str, int] = 2,
                 in_chans: int | Sequence[int] = 3, taps: Sequence[str] | None = None,
                 modalities: int | Sequence[str] | None = None, pretrained: Pretrained = False,
                 head_hidden: int = 256, drop_rate: float = 0.3, min_input_size: int = 32):
        super().__init__()
        backbones = list(backbones)
        if len(backbones) < 2:
            raise ValueError(f"concat_fusion needs two or more backbones, got {backbones}")
        if taps is not None and len(taps) != len(backbones):
            raise ValueError(f"taps needs one module name per backbone ({len(backbones)}), got {list(taps)}")
        self.modalities = modality_names(modalities) if modalities is not None else None
        if self.modalities is not None and len(self.modalities) != len(backbones):
            raise ValueError(f"{len(backbones)} backbones need {len(backbones)} modalities, got {self.modalities}")
        chans_per_trunk = per_modality(in_chans, self.modalities or backbones, "in_chans")
        if self.modalities is None and len(set(chans_per_trunk)) > 1:
            raise ValueError("backbones sharing one image need the same in_chans")
        # One int when the backbones share an image, one per modality otherwise (as DRIFA-Net).
        self.in_chans = chans_per_trunk if self.modalities else chans_per_trunk[0]
        self.task, self.num_classes = single_task(num_classes, "concat_fusion")
        self.tasks = {self.task: self.num_classes}
        self.min_input_size = min_input_size

        trunks = []
        for index, (name, chans) in enumerate(zip(backbones, chans_per_trunk)):
            weights = resolve_pretrained(pretrained, name)
            if taps is None:
                trunks.append(create_backbone(name, weights, chans))
            else:
                trunks.append(nn.Sequential(create_feature_taps(name, [taps[index]], weights, chans), _LastMapPool()))
        self.trunks = nn.ModuleList(trunks)
        self.num_features = sum(_num_features(trunk) for trunk in self.trunks)
        self.head = ClassifierHead(self.num_features, self.num_classes, head_hidden, drop_rate)

    def forward_features(self, inputs) -> torch.Tensor:
        if self.modalities is None:
            images = [check_image(inputs, self.in_chans)] * len(self.trunks)
        else:
            images = collect_modalities(inputs, self.modalities, self.in_chans)
        images = [upsample_to_min_size(x, self.min_input_size) for x in images]
        return torch.cat([trunk(x) for trunk, x in zip(self.trunks, images)], dim=1)

    def cam_target_layers(self) -> dict[str, list[nn.Module]]:
        """Each trunk's last stage: averaged into one map when the trunks share one image, else one per modality."""
        layers = [trunk[0].stages[-1] if isinstance(trunk, nn.Sequential) else last_feature_stage(trunk)
                  for trunk in self.trunks]
        if self.modalities is None:
            return {IMAGE_MAP: layers}
        return {name: [layer] for name, layer in zip(self.modalities, layers)}


class _LastMapPool(nn.Module):
    """Global average pooling of the last tapped map (FeatureTaps returns a list)."""

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return features[-1].mean(dim=(2, 3))


def _num_features(trunk: nn.Module) -> int:
    if isinstance(trunk, nn.Sequential):
        return trunk[0].channels[-1]
    return trunk.num_features


@register_model
def timm_classifier(**kwargs) -> TimmClassifier:
    """Baseline: any single timm model (default ResNet-18) with a dropout head."""
    return TimmClassifier(**kwargs)


@register_model
def concat_fusion(**kwargs) -> ConcatFusion:
    """Baseline: two or more timm backbones, pooled features concatenated, no attention."""
    return ConcatFusion(**kwargs)
