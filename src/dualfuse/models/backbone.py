"""timm CNN trunks with explicit feature taps.

Papers name the exact blocks they tap (DCAT: EfficientNet-B4 "block 4", 112 channels), which are not
always timm's `features_only` stage ends (timm's stride-16 output of `efficientnet_b4` is 160
channels). `FeatureTaps` therefore taps modules *by name*, runs only what the deepest tap needs and,
by default, drops everything after it.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import timm
import torch
from torch import nn

Pretrained = Union[bool, str, os.PathLike, Mapping[str, bool | str | os.PathLike]]

PROBE_SIZE = 224  # input size used once at construction to measure channels and strides


def resolve_pretrained(pretrained: Pretrained, backbone: str) -> bool | str:
    """Pick the weights for one backbone: `True` (timm hub), `False`, or a local file path.

    A mapping gives weights per backbone name, e.g. `{"efficientnet_b4": "b4.safetensors", "resnet34": True}`,
    which models with several backbones need for offline use.
    """
    if isinstance(pretrained, Mapping):
        pretrained = pretrained.get(backbone, False)
    if isinstance(pretrained, (str, os.PathLike)):
        return os.fspath(pretrained)
    return bool(pretrained)


def create_backbone(name: str, pretrained: bool | str = False, in_chans: int = 3, **kwargs) -> nn.Module:
    """A timm model without classifier; `pretrained` is `True` (ImageNet weights), `False`, or a local file.

    A local file (`.safetensors`, `.pth`, `.bin`; a timm state dict of the full model) goes through timm's
    own loader, so classifier removal and `in_chans=1` adaptation of the stem work as for hub weights.
    """
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown timm backbone {name!r} (see timm.list_models())")
    if isinstance(pretrained, str):
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights for {name} not found: {path}")
        try:
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                num_classes=0, in_chans=in_chans, **kwargs,
            )
        except RuntimeError as error:  # shape mismatch: say which file, keep it to one line
            first_line = str(error).strip().splitlines()[0]
            raise ValueError(f"{path}: weights do not fit backbone {name}: {first_line}") from None
        # timm loads non-strictly once the classifier is dropped, so a wrong file would load silently.
        provided = set(timm.models.load_state_dict(str(path)))
        missing = [key for key in model.state_dict() if key not in provided and not key.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(
                f"{path}: weights do not fit backbone {name}: {len(missing)} tensors missing, e.g. {missing[0]}"
            )
        return model
    return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)


def _split_into_named_modules(module: nn.Module, taps: Sequence[str], prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Top-level children in execution order, opening `nn.Sequential` containers that hold a tap."""
    flat = []
    for name, child in module.named_children():
        qualified = prefix + name
        if any(tap.startswith(qualified + ".") for tap in taps):
            if not isinstance(child, nn.Sequential):
                raise ValueError(
                    f"cannot tap inside {qualified!r}: it is a {type(child).__name__}, not an nn.Sequential"
                )
            flat += _split_into_named_modules(child, taps, qualified + ".")
        else:
            flat.append((qualified, child))
    return flat


class FeatureTaps(nn.Module):
    """Run a CNN's top-level modules in order and return the outputs of the tapped modules.

    Args:
        model: a CNN whose `named_children()` run in order (true for timm's ResNet, EfficientNet,
            ConvNeXt, RegNet, MobileNet, DenseNet families).
        taps: module names in execution order, e.g. `("blocks.2", "blocks.3")` or `("layer2", "layer3")`.
            Names inside an `nn.Sequential` (`blocks.3`) split it.
        truncate: drop the modules after the deepest tap (they would never run). With `False` they are
            kept, frozen, so that a full-model state dict still loads.

    `stages[i]` runs from the previous tap to tap `i`; `feature_info` lists each tap's module, channels
    and stride, as timm's `feature_info` does.
    """

    def __init__(self, model: nn.Module, taps: Sequence[str], truncate: bool = True, in_chans: int = 3):
        super().__init__()
        taps = list(taps)
        if not taps:
            raise ValueError("at least one feature tap is required")
        modules = _split_into_named_modules(model, taps)
        names = [name for name, _ in modules]
        missing = [tap for tap in taps if tap not in names]
        if missing:
            raise ValueError(f"feature taps {missing} not found in {type(model).__name__}; top-level modules: {names}")
        positions = [names.index(tap) for tap in taps]
        if positions != sorted(positions) or len(set(positions)) != len(positions):
            raise ValueError(f"feature taps {taps} must be distinct and in execution order")

        self.stages = nn.ModuleList()
        start = 0
        for end in positions:
            self.stages.append(nn.Sequential(OrderedDict(
                (name.replace(".", "_"), module) for name, module in modules[start:end + 1]
            )))
            start = end + 1
        self.unused = None
        if not truncate and start < len(modules):
            self.unused = nn.ModuleDict({name.replace(".", "_"): module for name, module in modules[start:]})
            self.unused.requires_grad_(False)
        self.feature_info = self._measure(taps, in_chans)

    @torch.no_grad()
    def _measure(self, taps: Sequence[str], in_chans: int) -> list[dict]:
        was_training = self.training
        self.eval()  # a probe must not touch BatchNorm running statistics
        x = torch.zeros(1, in_chans, PROBE_SIZE, PROBE_SIZE)
        info = []
        for tap, stage in zip(taps, self.stages):
            x = stage(x)
            info.append({"module": tap, "num_chs": x.shape[1], "reduction": round(PROBE_SIZE / x.shape[-1])})
        self.train(was_training)
        return info

    @property
    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        return [info["reduction"] for info in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def stage_end_taps(model: nn.Module) -> list[str]:
    """Timm's own stage ends (`feature_info`), skipping the stem-level entry at stride 2."""
    infos = model.feature_info.get_dicts() if hasattr(model.feature_info, "get_dicts") else model.feature_info
    return [info["module"] for info in infos if info["reduction"] > 2]


def create_feature_taps(
    name: str,
    taps: Sequence[str] | None = None,
    pretrained: bool | str = False,
    in_chans: int = 3,
    truncate: bool = True,
    **kwargs,
) -> FeatureTaps:
    """A timm backbone (`create_backbone`) cut at `taps` (default: its stage ends at strides 4–32)."""
    model = create_backbone(name, pretrained=pretrained, in_chans=in_chans, **kwargs)
    return FeatureTaps(model, stage_end_taps(model) if taps is None else taps, truncate=truncate, in_chans=in_chans)
