"""HIFA: hierarchical information fusion attention, the global half of MFA (DRIFA-Net, Dhar et al. 2025).

Two chained pairs of 1x1 convolutions build increasingly abstract sigmoid maps; average- and
max-pooled summaries of both levels are fused by one linear layer into a channel descriptor [code]:

    g1 = σ(conv(x)),  g2 = σ(conv(g1)),        s1 = GAP(g1) + GMP(g2)
    g3 = σ(conv(g1 + g2)),  g4 = σ(conv(g3)),  s2 = GAP(g3) + GMP(g4)
    G  = σ(Linear_{2C→C}([s1, s2]))
"""
from __future__ import annotations

import torch
from torch import nn

from dualfuse.models.layers.pooling import global_avg, global_max


class HIFA(nn.Module):
    """Returns the global attention descriptor G of shape (B, C, 1, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.conv4 = nn.Conv2d(channels, channels, 1)
        self.fc = nn.Linear(2 * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g1 = torch.sigmoid(self.conv1(x))
        g2 = torch.sigmoid(self.conv2(g1))
        s1 = global_avg(g1) + global_max(g2)
        g3 = torch.sigmoid(self.conv3(g1 + g2))
        g4 = torch.sigmoid(self.conv4(g3))
        s2 = global_avg(g3) + global_max(g4)
        descriptor = torch.cat([s1, s2], dim=1).flatten(1)
        return torch.sigmoid(self.fc(descriptor))[:, :, None, None]
