"""MLIFA: multimodal local information fusion attention, the local half of MIFA (DRIFA-Net).

Each modality gets its own 1x1 convolution; the sigmoid maps are pooled three ways and summed over
poolings and modalities [code for two modalities; the sum over m is our generalisation]:

    h_m = σ(conv_m(x_m)),   L = Σ_p Σ_m pool_p(h_m)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dualfuse.models.layers.pooling import MIN_AVG_MAX


class MLIFA(nn.Module):
    """Returns the shared local descriptor L of shape (B, C, 1, 1)."""

    def __init__(self, channels: int, num_modalities: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_modalities))

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        descriptor = 0.0
        for conv, x in zip(self.convs, xs):
            h = torch.sigmoid(conv(x))
            descriptor = descriptor + sum(pool(h) for pool in MIN_AVG_MAX)
        return descriptor
