"""MIFA: multimodal information fusion attention (DRIFA-Net), shared by all modality branches.

One attention from all modalities re-weights each of them, with a per-modality scale α_m [code]:

    A = σ(g_s · MGIFA(x_1..x_M) + l_s · MLIFA(x_1..x_M)),   MIFA(x)_m = x_m · A · α_m

This is how information crosses between branches: each branch is scaled by what all branches see.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dualfuse.models.layers.mgifa import MGIFA
from dualfuse.models.layers.mlifa import MLIFA


class MIFA(nn.Module):
    """Shared channel attention over M modality maps of C channels each (their sizes may differ)."""

    def __init__(self, channels: int, num_modalities: int, use_mgifa: bool = True, use_mlifa: bool = True):
        super().__init__()
        if not (use_mgifa or use_mlifa):
            raise ValueError("MIFA needs MGIFA or MLIFA; to remove MIFA altogether use use_mifa=False")
        self.num_modalities = num_modalities
        self.mgifa = MGIFA(channels) if use_mgifa else None
        self.mlifa = MLIFA(channels, num_modalities) if use_mlifa else None
        self.global_scale = nn.Parameter(torch.ones(())) if use_mgifa else None
        self.local_scale = nn.Parameter(torch.ones(1, channels, 1, 1)) if use_mlifa else None
        self.alpha = nn.Parameter(torch.ones(num_modalities, 1, channels, 1, 1))

    def attention(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        logits = 0.0
        if self.mgifa is not None:
            logits = logits + self.global_scale * self.mgifa(xs)
        if self.mlifa is not None:
            logits = logits + self.local_scale * self.mlifa(xs)
        return torch.sigmoid(logits)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(xs) != self.num_modalities:
            raise ValueError(f"MIFA was built for {self.num_modalities} modalities, got {len(xs)}")
        attention = self.attention(xs)
        return [x * attention * alpha for x, alpha in zip(xs, self.alpha)]
