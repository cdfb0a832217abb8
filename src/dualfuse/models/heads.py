"""Classifier heads. Every dropout that MC sampling uses lives here or later, after the backbones."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from dualfuse.models.base import DualfuseModel


class ClassifierHead(nn.Sequential):
    """Dropout → Linear(hidden) → ReLU → Dropout → Linear(classes); `hidden=0` gives Dropout → Linear.

    Binary tasks use two logits (softmax), so entropy means the same for every task.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, drop_rate: float = 0.3):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (binary tasks use 2 softmax logits), got {num_classes}")
        if hidden:
            layers = [nn.Dropout(drop_rate), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                      nn.Dropout(drop_rate), nn.Linear(hidden, num_classes)]
        else:
            layers = [nn.Dropout(drop_rate), nn.Linear(in_features, num_classes)]
        super().__init__(*layers)
        self.in_features = in_features
        self.num_classes = num_classes
        self.hidden = hidden
        self.drop_rate = drop_rate

    def like(self, num_classes: int) -> ClassifierHead:
        """A freshly initialised head of the same width and dropout for another task (multitask heads)."""
        return type(self)(self.in_features, num_classes, self.hidden, self.drop_rate)


def global_avg_max(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, 2C): average and max pooling side by side."""
    return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class SingleHeadModel(DualfuseModel):
    """A model with one task whose dropout all sits in `self.head`: `forward` = head(features).

    Then the MC-dropout split is exactly the features / head split. Subclasses set `self.task`
    (the task's name), `self.head` and `forward_features`.
    """

    task: str

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False):
        """`{task: logits}`; with `pre_logits` the fused feature vector the head reads."""
        if pre_logits:
            return features
        return {self.task: self.head(features)}

    def forward_deterministic(self, inputs) -> torch.Tensor:
        return self.forward_features(inputs)

    def forward_stochastic(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(features)

    def forward(self, inputs) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(inputs))


HEAD_ATTRIBUTES = ("head", "heads")  # where every dualfuse model keeps its task heads


def output_layers(model: DualfuseModel) -> dict[str, nn.Linear]:
    """Per task, the Linear that writes its logits: the last Linear of `model.head` (one task) or of
    `model.heads[task]`. A per-class constant added to its bias moves that task's logits and nothing else."""
    heads = getattr(model, "heads", None)
    if isinstance(heads, nn.ModuleDict):
        per_task = dict(heads.items())
    elif isinstance(getattr(model, "head", None), nn.Module) and len(model.tasks) == 1:
        per_task = {next(iter(model.tasks)): model.head}
    else:
        raise ValueError(f"{type(model).__name__} keeps its task heads in neither `head` nor `heads`")
    layers = {}
    for task, head in per_task.items():
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if not linears or linears[-1].bias is None or linears[-1].out_features != model.tasks[task]:
            raise ValueError(f"{type(model).__name__}: task {task!r} does not end in a Linear with a bias "
                             f"and {model.tasks[task]} outputs")
        layers[task] = linears[-1]
    return layers


@torch.no_grad()
def add_logit_offsets(model: DualfuseModel, offsets: Mapping[str, Sequence[float]]) -> None:
    """Add a constant per class to each named task's logits, in its output layer's bias: the saved weights
    then carry it, so evaluate, predict, serve, an ONNX export and Grad-CAM all decide the same way."""
    layers = output_layers(model)
    for task, offset in offsets.items():
        bias = layers[task].bias
        if len(offset) != bias.numel():
            raise ValueError(f"task {task!r}: {len(offset)} logit offsets for {bias.numel()} classes")
        bias.add_(torch.as_tensor(list(offset), dtype=bias.dtype, device=bias.device))


def output_bias_names(model: DualfuseModel) -> dict[str, str]:
    """Per task, the state-dict name of its output layer's bias (where `add_logit_offsets` writes)."""
    names = {id(module): name for name, module in model.named_modules()}
    return {task: f"{names[id(layer)]}.bias" for task, layer in output_layers(model).items()}


def posthoc_logit_offsets(tau: float, log_priors: Mapping[str, Sequence[float]] | None) -> dict[str, list[float]] | None:
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): `-tau * log(training prior)` per class. Added to
    a plainly trained model's logits it makes the argmax the balanced one, as if every class were equally
    common; `None` when there is nothing to add."""
    if not tau or not log_priors:
        return None
    return {task: [-float(tau) * float(value) for value in values] for task, values in log_priors.items()}
