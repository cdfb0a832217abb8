"""Grad-CAM overlays as PNG images, for `dualfuse explain` and the report's galleries.

Overlays are drawn on the image as the model saw it (after resizing, before normalisation is
undone only for display), so every pixel of the heat map lines up with what the model looked at.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from dualfuse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dualfuse.evaluation.predictions import model_inputs
from dualfuse.explain.gradcam import class_activation_maps
from dualfuse.models.spec import ModelSpec


def display_image(image: torch.Tensor, normalize: str | None) -> np.ndarray:
    """A model input `(C, H, W)` as an RGB float image in [0, 1] for display.

    ImageNet normalisation is undone exactly; per-image z-score/min-max inputs are stretched back
    to [0, 1] (the same picture up to brightness and contrast).
    """
    x = image.detach().float().cpu()
    if normalize == "imagenet" and x.shape[0] == 3:
        x = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    else:
        low, high = x.amin(), x.amax()
        x = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    x = x.clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy().astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """uint8 RGB: the heat map blended onto the image (the `grad-cam` library's colouring)."""
    return show_cam_on_image(image, cam, use_rgb=True, image_weight=image_weight)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name-safe version of a case id (`a/b c.png#3` → `a_b_c.png_3`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or "case"


@dataclass
class Overlay:
    """One Grad-CAM overlay: the case, the map (a modality, or "image"), the PNG, and what it explains."""

    case_id: str
    map_name: str
    png: bytes
    explained_class: int
    predicted_class: int
    probability: float


def explain_batch(model: nn.Module, spec: ModelSpec, batch: dict, task: str, method: str = "gradcam",
                  target_class: int | None = None) -> list[Overlay]:
    """Grad-CAM overlays of one loader batch for `task`: one per case and map, each drawn on the
    image as the model saw it, explaining `target_class` (default: each case's predicted class)."""
    x = model_inputs(batch, spec.modalities, model)
    with torch.no_grad():
        probs = torch.softmax(model(x)[task].float(), dim=1)
    predicted = probs.argmax(dim=1).tolist()
    explained = predicted if target_class is None else [target_class] * len(predicted)
    maps = class_activation_maps(model, x, explained, task=task, method=method)
    overlays = []
    for i, case_id in enumerate(batch["case_id"]):
        for map_name, cams in maps.items():
            modality = map_name if map_name in spec.modalities else spec.modalities[0]
            picture = overlay(display_image(batch[modality][i], spec.preprocessing.normalize), cams[i])
            overlays.append(Overlay(case_id, map_name, png_bytes(picture), explained[i], predicted[i],
                                    float(probs[i, predicted[i]])))
    return overlays
