"""MFA: multi-branch fusion attention (DRIFA-Net), applied inside each modality's branch.

    A = σ(g_s · HIFA(x) + l_s · CLIA(x)),   MFA(x) = x · A · α

with a learnable scalar g_s, per-channel l_s and per-channel α, all initialised to 1 [code].
"""
from __future__ import annotations

import torch
from torch import nn

from dualfuse.models.layers.clia import CLIA
from dualfuse.models.layers.hifa import HIFA


class MFA(nn.Module):
    """Channel re-weighting from a global (HIFA) and a local (CLIA) descriptor.

    `use_hifa` / `use_clia` drop one half for ablations; to drop MFA entirely, leave it out of the
    network (`DRIFANet(use_mfa=False)`).
    """

    def __init__(self, channels: int, use_hifa: bool = True, use_clia: bool = True):
        super().__init__()
        if not (use_hifa or use_clia):
            raise ValueError("MFA needs HIFA or CLIA; to remove MFA altogether use use_mfa=False")
        self.hifa = HIFA(channels) if use_hifa else None
        self.clia = CLIA(channels) if use_clia else None
        self.global_scale = nn.Parameter(torch.ones(())) if use_hifa else None
        self.local_scale = nn.Parameter(torch.ones(1, channels, 1, 1)) if use_clia else None
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        logits = 0.0
        if self.hifa is not None:
            logits = logits + self.global_scale * self.hifa(x)
        if self.clia is not None:
            logits = logits + self.local_scale * self.clia(x)
        return torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x) * self.alpha
