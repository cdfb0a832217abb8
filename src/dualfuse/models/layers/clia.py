"""CLIA: channel-wise local information attention, the local half of MFA (DRIFA-Net).

A 1x1 convolution scores each position, and the pooled score is refined once more [code]:

    l1 = GAP(σ(conv(x))),  l2 = GAP(σ(conv(l1))),  L = l1 + l2
"""
from __future__ import annotations

import torch
from torch import nn

from dualfuse.models.layers.pooling import global_avg


class CLIA(nn.Module):
    """Returns the local attention descriptor L of shape (B, C, 1, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l1 = global_avg(torch.sigmoid(self.conv1(x)))
        l2 = global_avg(torch.sigmoid(self.conv2(l1)))
        return l1 + l2
