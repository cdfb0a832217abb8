"""Tiny saved models (32 px, random weights) for export and serving tests, and real images to feed them.

A helper module, not a conftest.py: a second `conftest` module would shadow tests/conftest.py for
the test modules that import from it. Test modules wrap these helpers in their own fixtures.

Weights are random: these tests check that export and serving reproduce PyTorch and behave, not
what a model learned. The served model carries a hand-written calibration (format 2), so referral,
conformal sets and temperature are exercised end to end.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualfuse.models import ModelSpec, Preprocessing, create_model
from dualfuse.models.saved import save_model

PX = 32
BREAST = ["malignant", "normal_or_benign"]
BRAIN = ["glioma", "meningioma", "notumor", "pituitary"]

# One tiny configuration per registered model: (constructor kwargs, modalities, tasks).
TINY: dict[str, tuple[dict, list[str], dict[str, list[str]]]] = {
    "dcat": ({"in_chans": 1, "embed_dim": 32, "num_heads": 2, "head_hidden": 32}, ["image"], {"label": BREAST}),
    "drifa_net": ({"modalities": ["mri", "ultrasound"], "in_chans": 1}, ["mri", "ultrasound"],
                  {"tumour": BRAIN, "lesion": BREAST}),
    "timm_classifier": ({"backbone": "resnet18", "in_chans": 1}, ["image"], {"label": BREAST}),
    "concat_fusion": ({"backbones": ["resnet18", "efficientnet_b0"], "in_chans": 1, "head_hidden": 16}, ["image"],
                      {"label": BREAST}),
    "multitask": ({"trunk_kwargs": {"backbone": "resnet18"}, "modalities": ["mri", "ultrasound"], "in_chans": 1},
                  ["mri", "ultrasound"], {"mri_label": BRAIN, "ultrasound_label": BREAST}),
}

CALIBRATION = {
    "format": 2, "seed": 0, "rows": 32, "calibration_split": "cal", "calibration_note": None, "members": [],
    "default": "1x8",
    "predictors": {"1x8": {"label": {
        "predictor": "1x8", "temperature": 1.5,
        "referral": {"threshold": 0.9, "confidence": "max_prob", "target_coverage": 0.9, "target_accuracy": None,
                     "reachable": True},
        "conformal": {"lac": {"alpha": 0.1, "qhat": 0.55}, "aps": {"alpha": 0.1, "qhat": 0.95}}}}},
}


def tiny_model_folder(folder: Path, name: str, seed: int = 0, tasks: dict[str, list[str]] | None = None,
                      img_size: int = PX) -> Path:
    kwargs, modalities, default_tasks = TINY[name]
    tasks = tasks or default_tasks
    kwargs = {**kwargs, "num_classes": {task: len(classes) for task, classes in tasks.items()}}
    torch.manual_seed(seed)
    model = create_model(name, **kwargs).eval()
    spec = ModelSpec(name=name, kwargs=kwargs, tasks=tasks, modalities=modalities,
                     preprocessing=Preprocessing(img_size=img_size, resize="resize", normalize="zscore",
                                                 in_chans={m: 1 for m in modalities}))
    return save_model(folder, model, spec)


def served_model_folder(folder: Path, classes: list[str] = BREAST, img_size: int = PX) -> Path:
    """A tiny DCAT model folder with a calibration beside it (8 MC samples, temperature 1.5)."""
    folder = tiny_model_folder(folder, "dcat", tasks={"label": classes}, img_size=img_size)
    (folder / "uncertainty.json").write_text(json.dumps(CALIBRATION))
    return folder


def write_real_images(data_root: Path, folder: Path) -> dict[str, Path]:
    """Real files from DUALFUSE_DATA: BreastMNIST test images as PNG, brain MRI JPEGs, a paired manifest."""
    breast = np.load(data_root / "medmnist" / "breastmnist.npz")["test_images"]
    pngs = []
    for i in range(8):
        path = folder / f"breast_{i}.png"
        Image.fromarray(breast[i]).save(path)
        pngs.append(path)
    mri = sorted((data_root / "brain-tumor-mri" / "testing" / "glioma").glob("*.jpg"))[:8]
    manifest = folder / "pairs.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "mri", "ultrasound"])
        writer.writerows([f"case{i}", m, p] for i, (m, p) in enumerate(zip(mri, pngs)))
    return {"png": pngs[0], "pngs": folder, "mri": mri[0], "pairs": manifest,
            "npz": data_root / "medmnist" / "breastmnist.npz"}
