"""Test-time augmentation: each case seen through a few small, label-preserving views.

View 0 is the image itself. View v > 0 shifts the image by a few pixels (at most `translate` of its
side, edges replicated) and, only where anatomy allows (`hflip`/`vflip`: off by default, because
laterality matters on chest X-rays and brain scans), mirrors it. A view is drawn from (seed, case,
view), never from the batch, so a case's views, and with them its probabilities and refer flag, are
the same whatever it is predicted with. No intensity change: inputs are already normalised.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TTAConfig:
    """How views are drawn; stored with the calibration so `predict` draws the same ones."""

    views: int = 1
    translate: float = 0.05
    hflip: bool = False
    vflip: bool = False

    def __post_init__(self):
        if self.views < 1:
            raise ValueError(f"tta views must be at least 1, got {self.views}")
        if not 0 <= self.translate < 0.5:
            raise ValueError(f"tta translate must be in [0, 0.5), got {self.translate}")

    def to_dict(self) -> dict:
        return asdict(self)


def _view_params(seed: int, case_key: int, view: int, size: tuple[int, int], config: TTAConfig):
    digest = hashlib.sha256(f"tta:{seed}:{case_key}:{view}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    max_dy, max_dx = (round(config.translate * side) for side in size)
    dy = int(torch.randint(-max_dy, max_dy + 1, (), generator=generator)) if max_dy else 0
    dx = int(torch.randint(-max_dx, max_dx + 1, (), generator=generator)) if max_dx else 0
    hflip = config.hflip and bool(torch.randint(0, 2, (), generator=generator))
    vflip = config.vflip and bool(torch.randint(0, 2, (), generator=generator))
    return dy, dx, hflip, vflip


def _shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(C, H, W) moved by (dy, dx) pixels, the uncovered border filled by replicating the edge."""
    if not dy and not dx:
        return image
    height, width = image.shape[-2:]
    padded = F.pad(image[None], (abs(dx), abs(dx), abs(dy), abs(dy)), mode="replicate")[0]
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[:, top:top + height, left:left + width]


def view_batch(images: torch.Tensor, keys: Sequence[int], view: int, seed: int, config: TTAConfig) -> torch.Tensor:
    """View `view` of every case of a (B, C, H, W) batch (view 0: the images unchanged)."""
    if view == 0:
        return images
    out = []
    for image, key in zip(images, keys):
        dy, dx, hflip, vflip = _view_params(seed, key, view, tuple(image.shape[-2:]), config)
        image = _shift(image, dy, dx)
        if hflip:
            image = image.flip(-1)
        if vflip:
            image = image.flip(-2)
        out.append(image)
    return torch.stack(out)


def view_inputs(inputs, keys: Sequence[int], view: int, seed: int, config: TTAConfig):
    """The same view of a model's inputs: one tensor, or every modality of a dict (each modality
    moved by its own draw, so co-registered sequences would need one draw: they get view 0 only)."""
    if isinstance(inputs, Mapping):
        if len(inputs) > 1 and view:
            raise ValueError("test-time augmentation of several modalities is not supported: views of "
                             "co-registered inputs would have to move together")
        return {m: view_batch(x, keys, view, seed, config) for m, x in inputs.items()}
    return view_batch(inputs, keys, view, seed, config)
