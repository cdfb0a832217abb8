"""One trunk shared by several datasets, one head per dataset: in-domain multitask pretraining.

ImageNet weights cannot be fetched offline, and small medical sets train poorly from scratch. The
stand-in is a trunk trained on every other labelled medical set at once, in zip mode (DRIFA-Net's
protocol: the datasets are the "modalities", each with its own task): every image of a batch goes
through the SAME trunk, and task t's head reads only the features of its own dataset's image. That
is also a test of DRIFA-Net's claim that learning across modalities generalises, without its
cross-modal fusion. The trunk is any registered single-image model (`timm_classifier`, `dcat`,
`concat_fusion`) built as usual, its own head replaced by an identity, so its own
`forward_features` / `forward_deterministic` / `forward_stochastic` give its features; the task heads
copy its head's form (`ClassifierHead.like`).

The trunk's tensors are stored under `trunk.` (`TRUNK_PREFIX`): with it stripped they are exactly
the state dict of the plain trunk model, so `model.init_from` of a multitask run into a plain model of
the same trunk settings loads every trunk tensor (models/transfer.py strips the prefix when the
source's spec says `multitask`); the task heads (`heads.<task>`) are not loaded, their tasks differ.

Each modality runs through the trunk on its own, so in training BatchNorm normalises every
dataset's batch by that dataset's statistics, as the fine-tuned single-dataset model later does.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from dualfuse.models.backbone import Pretrained
from dualfuse.models.base import IMAGE_MAP, DualfuseModel
from dualfuse.models.heads import ClassifierHead, SingleHeadModel
from dualfuse.models.inputs import collect_modalities, modality_names, per_modality
from dualfuse.models.registry import create_model, list_models, model_class, register_model

MULTITASK = "multitask"  # the registry name; transfer.py renames a source saved under it
DEFAULT_TRUNK = "timm_classifier"
TRUNK_PREFIX = "trunk."
_SET_BY_MULTITASK = ("in_chans", "num_classes", "modalities", "pretrained")


def single_image_models() -> list[str]:
    """Registered models that can serve as a trunk: those that take one image per case."""
    return [name for name in list_models() if model_class(name).inputs != "modalities"]


def as_trunk_weights(state: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A multitask state dict as the plain trunk model's: `(trunk tensors without TRUNK_PREFIX,
    names of the other tensors: the task heads)`."""
    trunk = {name[len(TRUNK_PREFIX):]: value for name, value in state.items() if name.startswith(TRUNK_PREFIX)}
    return trunk, [name for name in state if not name.startswith(TRUNK_PREFIX)]


class _ModalityTaps(nn.Module):
    """One identity per (modality, trunk Grad-CAM layer), run on that layer's output while the trunk
    sees that modality: Grad-CAM hooks the identities, so a shared trunk still gives one map per
    modality (the layer itself runs once per modality and a hook on it would see them all)."""

    def __init__(self, modalities: Sequence[str], layers: Sequence[nn.Module]):
        super().__init__()
        self.taps = nn.ModuleDict({m: nn.ModuleList(nn.Identity() for _ in layers) for m in modalities})
        self.current: str | None = None
        for index, layer in enumerate(layers):
            # A bound method (not a closure), so deep copies (EMA, export) route through their own taps.
            layer.register_forward_hook(partial(self._route, index))

    def _route(self, index: int, module: nn.Module, args, output):
        return output if self.current is None else self.taps[self.current][index](output)

    @contextmanager
    def seeing(self, modality: str) -> Iterator[None]:
        self.current = modality
        try:
            yield
        finally:
            self.current = None


class MultitaskModel(DualfuseModel):
    """One shared single-image trunk, one head per modality's task (zip mode: one dataset each).

    Args:
        trunk: the registered single-image model whose features form the trunk: `"timm_classifier"`
            (with `trunk_kwargs={"backbone": "resnet18"}`), `"dcat"` (its two truncated CNNs and the
            fusion), or `"concat_fusion"`.
        trunk_kwargs: that model's constructor arguments (head form included: `head_hidden`,
            `drop_rate`), except `in_chans`, `num_classes`, `modalities` and `pretrained`, set here.
        modalities: the number of modalities or their names (zip mode: the dataset names); `forward`
            takes one image per modality as a dict or a list in this order.
        num_classes: one int (every modality's task `<modality>_label` has that many classes), a list
            (one per modality, same names) or `{task: classes}`, one task per modality: paired by name
            when the tasks are named `<modality>_label` (zip mode), else in order.
        in_chans: the trunk's channels, one for every modality (1 or 3; zip mode converts each
            dataset's images to it: grey replicated to 3, RGB to luminance).
        pretrained: the trunk's weights (`True`, `False`, a file or `{backbone: ...}`, as the trunk takes).
    """

    inputs = "modalities"

    def __init__(self, trunk: str = DEFAULT_TRUNK, trunk_kwargs: Mapping[str, Any] | None = None,
                 modalities: int | Sequence[str] = 2, num_classes: int | Sequence[int] | Mapping[str, int] = 2,
                 in_chans: int | Sequence[int] = 3, pretrained: Pretrained = False):
        super().__init__()
        trunk_kwargs = dict(trunk_kwargs or {})
        clash = [key for key in _SET_BY_MULTITASK if key in trunk_kwargs]
        if clash:
            raise ValueError(f"multitask: trunk_kwargs.{clash[0]} is set by multitask itself; give it as a "
                             "multitask argument (model.kwargs), not in trunk_kwargs")
        trunks = single_image_models()
        if trunk not in trunks:
            raise ValueError(f"multitask: trunk {trunk!r} is not a registered single-image model; use one of "
                             f"{', '.join(trunks)}")
        self.modalities = modality_names(modalities)
        chans = set(per_modality(in_chans, self.modalities, "in_chans"))
        if len(chans) != 1:
            raise ValueError(f"multitask: one trunk takes one channel count, got in_chans {list(in_chans)} "
                             "(convert the data instead: data.sources.<name>.channels)")
        self.in_chans = [chans.pop()] * len(self.modalities)  # per modality, as every multi-input model
        self.tasks = _tasks(num_classes, self.modalities)
        self.task_modality = dict(zip(self.tasks, self.modalities))

        model = create_model(trunk, **trunk_kwargs, in_chans=self.in_chans[0], pretrained=pretrained)
        head = getattr(model, "head", None)
        if not isinstance(model, SingleHeadModel) or not isinstance(head, ClassifierHead) or model.multi_input:
            raise ValueError(f"multitask: trunk {trunk!r} with {trunk_kwargs} is not a single-image model with one "
                             "ClassifierHead (build it without modalities)")
        model.head = nn.Identity()  # the trunk's own forward_* methods now end at its features
        self.trunk = model
        self.trunk_features = model.num_features
        self.num_features = self.trunk_features * len(self.modalities)
        self.heads = nn.ModuleDict({task: head.like(n) for task, n in self.tasks.items()})
        self.cam_taps = _ModalityTaps(self.modalities, model.cam_target_layers()[IMAGE_MAP])

    def _per_modality(self, step: Callable, inputs: Sequence) -> list:
        """`step` on each modality's input in modality order, with that modality's Grad-CAM taps active."""
        out = []
        for x, modality in zip(inputs, self.modalities):
            with self.cam_taps.seeing(modality):
                out.append(step(x))
        return out

    def forward_deterministic(self, inputs) -> list:
        """Each modality's trunk prefix (everything before the trunk's first dropout), in modality order."""
        xs = collect_modalities(inputs, self.modalities, self.in_chans)
        return self._per_modality(self.trunk.forward_deterministic, xs)

    def forward_stochastic(self, state: Sequence) -> dict[str, torch.Tensor]:
        """The rest of the trunk per modality (nothing for most trunks), then each task's head."""
        features = self._per_modality(lambda s: self.trunk.forward_stochastic(s)[self.trunk.task], state)
        return self.forward_head(features)

    def forward_features(self, inputs) -> list[torch.Tensor]:
        """Each modality's trunk features (B, trunk_features), in modality order."""
        xs = collect_modalities(inputs, self.modalities, self.in_chans)
        return self._per_modality(self.trunk.forward_features, xs)

    def forward_head(self, features: Sequence[torch.Tensor], pre_logits: bool = False):
        """`{task: its head on its own modality's features}`; with `pre_logits` every modality's
        features side by side (B, num_features)."""
        if pre_logits:
            return torch.cat(list(features), dim=1)
        return {task: head(x) for (task, head), x in zip(self.heads.items(), features)}

    def forward(self, inputs) -> dict[str, torch.Tensor]:
        return self.forward_stochastic(self.forward_deterministic(inputs))

    def cam_target_layers(self) -> dict[str, list[nn.Module]]:
        """Per modality, the trunk's own Grad-CAM layers as that modality saw them (see `_ModalityTaps`)."""
        return {modality: list(taps) for modality, taps in self.cam_taps.taps.items()}


def _tasks(num_classes: int | Sequence[int] | Mapping[str, int], modalities: list[str]) -> dict[str, int]:
    """`{task: classes}`, one task per modality in modality order."""
    if isinstance(num_classes, Mapping):
        tasks = {str(task): n for task, n in num_classes.items()}
        by_name = [f"{modality}_label" for modality in modalities]
        if set(tasks) == set(by_name):  # zip mode's names: pair by name, whatever the order given
            tasks = {task: tasks[task] for task in by_name}
    else:
        counts = per_modality(num_classes, modalities, "num_classes")
        tasks = {f"{modality}_label": n for modality, n in zip(modalities, counts)}
    if len(tasks) != len(modalities):
        raise ValueError(f"multitask: one task per modality; got tasks {list(tasks)} for modalities {modalities}")
    for task, n in tasks.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"multitask: task {task!r} needs num_classes >= 2 (binary tasks use 2 logits), got {n!r}")
    return tasks


@register_model
def multitask(**kwargs) -> MultitaskModel:
    """In-domain pretraining: one single-image trunk shared by every dataset, one head per dataset's task."""
    return MultitaskModel(**kwargs)
