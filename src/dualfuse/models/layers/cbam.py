"""Enhanced CBAM refinement (DCAT): channel then spatial attention, applied as a residual.

DCAT refines fused maps with "refined channel and spatial attention", an "enhanced CBAM" [paper].
Our reading [ours]: CBAM's sequential gates (Woo et al., 2018; timm's `CbamModule`: channel gate
from an avg+max pooled MLP, spatial gate from a 7x7 conv over channel mean/max) added back to the
input, `F + F * Mc * Ms`, so the block can start close to the identity and never blocks gradients.
"""
from __future__ import annotations

import torch
from timm.layers.cbam import CbamModule
from torch import nn

REFINE_MODES = ("enhanced", "plain", "none")


class EnhancedCbam(nn.Module):
    """CBAM with a residual path. `mode="plain"` is the original CBAM, `"none"` the identity."""

    def __init__(self, channels: int, mode: str = "enhanced", rd_ratio: float = 1.0 / 16, spatial_kernel_size: int = 7):
        super().__init__()
        if mode not in REFINE_MODES:
            raise ValueError(f"refine mode must be one of {REFINE_MODES}, got {mode!r}")
        self.mode = mode
        self.cbam = None
        if mode != "none":
            self.cbam = CbamModule(channels, rd_ratio=rd_ratio, spatial_kernel_size=spatial_kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cbam is None:
            return x
        refined = self.cbam(x)
        return x + refined if self.mode == "enhanced" else refined
