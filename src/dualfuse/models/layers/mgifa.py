"""MGIFA: multimodal global information fusion attention, the global half of MIFA (DRIFA-Net).

For each pooling p in {min, avg, max}, the modalities' pooled maps are summed, and one shared
linear layer scores the sum [code for two modalities; the sum over m is our generalisation]:

    P_p = Σ_m pool_p(x_m),   G = Σ_p σ(Linear_{C→C}(P_p))
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dualfuse.models.layers.pooling import MIN_AVG_MAX


class MGIFA(nn.Module):
    """Returns the shared global descriptor G of shape (B, C, 1, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        descriptor = 0.0
        for pool in MIN_AVG_MAX:
            pooled = torch.stack([pool(x) for x in xs]).sum(dim=0).flatten(1)
            descriptor = descriptor + torch.sigmoid(self.fc(pooled))
        return descriptor[:, :, None, None]
