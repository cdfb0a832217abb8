"""Grad-CAM overlays as PNG files: `dualfuse explain CHECKPOINT INPUTS`.

Overlays are drawn on the image as the model saw it (after resizing, before normalisation is
undone only for display), so every pixel of the heat map lines up with what the model looked at.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image

from dualfuse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dualfuse.evaluation.predictions import model_inputs
from dualfuse.explain.gradcam import class_activation_maps
from dualfuse.training.checkpoints import atomic_write_bytes


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
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name-safe version of a case id (`a/b c.png#3` → `a_b_c.png_3`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or "case"


def explain(checkpoint: str | Path, inputs: list[str], output: str | Path, method: str = "gradcam",
            target_class: str | None = None, task: str | None = None, batch_size: int = 16) -> pd.DataFrame:
    """Write one overlay PNG per case and map (one map per modality for multi-input models) to
    `output`, plus `explanations.csv` listing each file with the explained and predicted class."""
    from dualfuse.training.run import load_for_inference, prediction_loader

    model, spec = load_for_inference(checkpoint)
    tasks = spec["tasks"]
    task = task or next(iter(tasks))
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; the model predicts {list(tasks)}")
    names = tasks[task]
    if target_class is not None and target_class not in names:
        raise ValueError(f"unknown class {target_class!r} for task {task!r}; classes are {names}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    modalities = spec["modalities"]
    normalize = spec["preprocessing"]["normalize"]
    rows, used = [], set()
    for batch in prediction_loader(inputs, spec, batch_size=batch_size):
        x = model_inputs(batch, modalities, model)
        with torch.no_grad():
            logits = model(x)
            logits = logits[task] if isinstance(logits, dict) else logits
        probs = torch.softmax(logits.float(), dim=1)
        predicted = probs.argmax(dim=1).tolist()
        explained = predicted if target_class is None else [names.index(target_class)] * len(predicted)
        maps = class_activation_maps(model, x, explained, task=task, method=method)
        for i, case_id in enumerate(batch["case_id"]):
            stem = safe_name(case_id)
            while stem in used:
                stem += "_"
            used.add(stem)
            for map_name, cams in maps.items():
                modality = map_name if map_name in modalities else modalities[0]
                picture = overlay(display_image(batch[modality][i], normalize), cams[i])
                file = output / f"{stem}_{map_name}_{method}.png"
                atomic_write_bytes(file, png_bytes(picture))
                rows.append({"case_id": case_id, "map": map_name, "file": file.name, "task": task,
                             "explained_class": names[explained[i]], "predicted_class": names[predicted[i]],
                             "probability": float(probs[i, predicted[i]])})
    frame = pd.DataFrame(rows)
    atomic_write_bytes(output / "explanations.csv", frame.to_csv(index=False).encode())
    return frame
