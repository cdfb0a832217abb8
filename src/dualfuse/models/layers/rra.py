"""RRA: robust residual attention block, the ResNet basic block of DRIFA-Net with MFA inside [code].

    conv3x3(stride) → MFA → BN → ReLU → conv3x3 → MFA → BN,  + shortcut,  → ReLU

The shortcut is the identity, or conv1x1(stride) + BN when the shape changes.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class RRABlock(nn.Module):
    """A residual block whose convolutions are each followed by an attention layer (MFA by default).

    Args:
        attn_layer: builds the attention for a width, e.g. `functools.partial(MFA, use_clia=False)`;
            `None` gives a plain ResNet basic block (the "no MFA" ablation).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1,
                 attn_layer: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.attn1 = attn_layer(out_chs) if attn_layer else nn.Identity()
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.attn2 = attn_layer(out_chs) if attn_layer else nn.Identity()
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.attn1(self.conv1(x))))
        x = self.bn2(self.attn2(self.conv2(x)))
        return self.act2(x + shortcut)
