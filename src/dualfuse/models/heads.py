"""Classifier heads. Every dropout that MC sampling uses lives here or later, after the backbones."""
from __future__ import annotations

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
