"""What every dualfuse model declares, so no caller branches on a model's type or name.

Contract (checked for every registered model by tests/models/test_contract.py):

* `forward(inputs)` returns `{task: logits (B, C)}`, for one task as for several.
* `inputs` is one tensor (B, C, H, W) when `multi_input` is false, else `{modality: tensor}` (or a
  list in `modalities` order).
* `forward_deterministic(inputs) -> state` and `forward_stochastic(state) -> {task: logits}` split
  the network at its first dropout, for exact fast MC dropout.
* `forward_features(inputs)` and `forward_head(features, pre_logits=True)` give the fused vector
  every task head reads (embeddings, t-SNE).
* `cam_target_layers()` names the layers Grad-CAM should explain: `{map name: [modules]}`, one map
  per modality for multi-input models, else one map named `IMAGE_MAP`.
* `paper` cites the publication the architecture comes from (`None` for baselines); `inputs` says
  whether the class takes one image, one per modality, or either.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

IMAGE_MAP = "image"  # the Grad-CAM map name of single-input models
DEFAULT_TASK = "label"


@dataclass(frozen=True)
class PaperReference:
    """The publication a model implements, for model cards and reports."""

    citation: str
    url: str


class DualfuseModel(nn.Module):
    """Base class of every registered model: capabilities as attributes, one output contract.

    Subclasses set `tasks` (`{task: classes}`), `modalities` (names, or `None` for one shared
    image) and `in_chans`, and implement the forward methods and `cam_target_layers`.
    """

    paper: ClassVar[PaperReference | None] = None
    # "image": one image per case; "modalities": one image per modality, always; "either": one shared
    # image unless built with `modalities`. Lets a config be turned into constructor arguments
    # without building the model or knowing its name.
    inputs: ClassVar[str] = "image"
    tasks: dict[str, int]
    modalities: list[str] | None = None
    # `{task: modality}` when each task reads one modality only (multitask pretraining), else None:
    # a task's Grad-CAM map of any other modality is then empty by construction.
    task_modality: dict[str, str] | None = None

    @property
    def multi_input(self) -> bool:
        """True when `forward` takes one image per modality (a dict or list), not one tensor."""
        return self.modalities is not None

    def cam_target_layers(self) -> dict[str, list[nn.Module]]:
        raise NotImplementedError(f"{type(self).__name__} does not name its Grad-CAM target layers")


def task_classes(num_classes: int | Sequence[int] | Mapping[str, int]) -> dict[str, int]:
    """`4` → `{"label": 4}`; `[4, 2]` → `{"task0": 4, "task1": 2}`; a mapping names the tasks itself."""
    if isinstance(num_classes, bool):
        raise ValueError(f"num_classes must be an int, a list or a mapping, got {num_classes!r}")
    if isinstance(num_classes, int):
        tasks = {DEFAULT_TASK: num_classes}
    elif isinstance(num_classes, Mapping):
        tasks = {str(name): int(n) for name, n in num_classes.items()}
    else:
        tasks = {f"task{i}": int(n) for i, n in enumerate(num_classes)}
    if not tasks:
        raise ValueError("num_classes must name at least one task")
    for name, n in tasks.items():
        if n < 2:
            raise ValueError(f"task {name!r}: num_classes must be at least 2 (binary tasks use 2 logits), got {n}")
    return tasks


def single_task(num_classes: int | Mapping[str, int], model: str) -> tuple[str, int]:
    """The one `(task, classes)` of a single-head model; several tasks are a one-line error."""
    tasks = task_classes(num_classes)
    if len(tasks) != 1:
        raise ValueError(f"{model} predicts one task; got num_classes for {list(tasks)} (use drifa_net for several)")
    return next(iter(tasks.items()))


def last_feature_stage(backbone: nn.Module) -> nn.Module:
    """A timm model's last feature stage (its `feature_info[-1]`): the usual Grad-CAM layer."""
    return backbone.get_submodule(backbone.feature_info[-1]["module"])
