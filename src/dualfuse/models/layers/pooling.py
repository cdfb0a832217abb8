"""Global spatial pooling used by the DRIFA attention modules; outputs keep (B, C, 1, 1)."""
from __future__ import annotations

import torch


def global_avg(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


def global_max(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=(2, 3), keepdim=True)


def global_min(x: torch.Tensor) -> torch.Tensor:
    return x.amin(dim=(2, 3), keepdim=True)


# MGIFA and MLIFA pool with all three [code].
MIN_AVG_MAX = (global_min, global_avg, global_max)
