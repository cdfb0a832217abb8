"""Input validation and small-input handling shared by every model."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def check_image(x: object, in_chans: int, name: str = "input") -> torch.Tensor:
    """Fail early with one clear line instead of a shape error deep inside a convolution."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4D tensor (batch, channels, height, width), got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{name}: expected {in_chans} channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
    return x


def upsample_to_min_size(x: torch.Tensor, min_size: int) -> torch.Tensor:
    """Bilinearly enlarge an image whose shorter side is below `min_size`, keeping its aspect ratio.

    Deep taps of small inputs (MedMNIST's 28 px) would otherwise shrink to nothing or to maps of
    unequal size in the two backbones.
    """
    height, width = x.shape[-2:]
    if min(height, width) >= min_size:
        return x
    scale = min_size / min(height, width)
    size = (max(min_size, round(height * scale)), max(min_size, round(width * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def modality_names(modalities: int | Sequence[str]) -> list[str]:
    """`2` → `["modality0", "modality1"]`; a list of names is kept (names must be unique)."""
    if isinstance(modalities, int):
        if modalities < 1:
            raise ValueError(f"modalities must be at least 1, got {modalities}")
        return [f"modality{i}" for i in range(modalities)]
    names = [str(name) for name in modalities]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"modality names must be non-empty and unique, got {names}")
    return names


def per_modality(value: int | Sequence[int], names: Sequence[str], field: str) -> list[int]:
    """Broadcast one setting (e.g. `in_chans`) to every modality, or check a per-modality list."""
    if isinstance(value, int):
        return [value] * len(names)
    values = list(value)
    if len(values) != len(names):
        raise ValueError(f"{field}: expected {len(names)} values (one per modality {list(names)}), got {values}")
    return values


def collect_modalities(inputs: object, names: Sequence[str], in_chans: Sequence[int]) -> list[torch.Tensor]:
    """Accept one tensor per modality as a list/tuple (in order) or a dict keyed by modality name.

    A single tensor is accepted when the model has one modality.
    """
    if isinstance(inputs, torch.Tensor) and len(names) == 1:
        inputs = [inputs]
    if isinstance(inputs, Mapping):
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValueError(f"missing modalities {missing}; the model expects {list(names)}, got {list(inputs)}")
        inputs = [inputs[name] for name in names]
    if not isinstance(inputs, (list, tuple)):
        raise ValueError(
            f"expected {len(names)} modality tensors {list(names)} as a list or dict, got {type(inputs).__name__}"
        )
    if len(inputs) != len(names):
        raise ValueError(f"expected {len(names)} modalities {list(names)}, got {len(inputs)} inputs")
    tensors = [check_image(x, chans, f"modality {name!r}") for x, chans, name in zip(inputs, in_chans, names)]
    # Compared pairwise, not as a set: a tracer's sizes are tensors, each its own set element.
    if any(x.shape[0] != tensors[0].shape[0] for x in tensors[1:]):
        raise ValueError(f"modalities have different batch sizes: {[x.shape[0] for x in tensors]}")
    return tensors
