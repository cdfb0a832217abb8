"""`load_model(path)`: a ready model from a run folder, a model folder or a weights file.

It returns the network (eval mode), its typed `ModelSpec`, the calibration `evaluate --mc-samples`
stored beside it and every ensemble member, so `predict`, `explain`, `report`, benchmarks and a
server all start from the same object. Loading never imports Lightning and never downloads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dualfuse.api.run_folder import CALIBRATION_FILE, RunFolder, RunFolderError
from dualfuse.evaluation.predictions import softmax
from dualfuse.models.saved import SPEC_NAME
from dualfuse.models.saved import load_model as load_saved_model
from dualfuse.models.spec import ModelSpec
from dualfuse.uncertainty.ensemble import ensemble_mc_logits


@dataclass
class LoadedModel:
    """A trained model ready for inference: `model` (the first ensemble member), `spec`, `calibration`
    (temperature, referral and conformal thresholds per task, or `None`), and all `members`."""

    model: nn.Module
    spec: ModelSpec
    calibration: dict | None = None
    members: list[nn.Module] = field(default_factory=list)
    run: RunFolder | None = None
    path: Path | None = None

    @property
    def mc_samples(self) -> int:
        """MC-dropout samples the calibration was fitted with (0: deterministic softmax)."""
        return int(self.calibration["mc_samples"]) if self.calibration else 0

    def temperature(self) -> dict[str, float]:
        return {t: float(e["temperature"]) for t, e in (self.calibration or {}).get("tasks", {}).items()}

    @torch.no_grad()
    def predict_proba(self, inputs) -> dict[str, np.ndarray]:
        """`{task: (B, C) probabilities}` for a batch of preprocessed inputs, as `predict` computes
        them: the calibrated MC/ensemble mean when the model is calibrated, else the softmax."""
        if self.mc_samples:
            samples = ensemble_mc_logits(self.members, inputs, self.mc_samples, seed=self.calibration["seed"])
            temperature = self.temperature()
            return {t: softmax(s.float().cpu().numpy(), temperature.get(t, 1.0)).mean(axis=0)
                    for t, s in samples.items()}
        return {t: softmax(logits.float().cpu().numpy()) for t, logits in self.model.eval()(inputs).items()}


def model_dir_of(path: Path) -> Path:
    """A run folder means its exported best model; anything else is taken as given."""
    return path / "model" if (path / "model" / SPEC_NAME).is_file() else path


def calibration_path(path: Path) -> Path:
    """Where the calibration of a saved model lives: beside its model.json."""
    model_dir = model_dir_of(path)
    if model_dir.is_dir():
        return model_dir / CALIBRATION_FILE
    run = RunFolder.containing(path)
    return run.calibration_path if run else path.parent / CALIBRATION_FILE


def load_model(path: str | Path, expected_model: str | None = None, with_members: bool = True) -> LoadedModel:
    """Load a run folder, model folder, `model.safetensors` or Lightning `.ckpt`, with its calibration
    and (unless `with_members=False`) the ensemble members the calibration or the run names."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir() and not (model_dir_of(path) / SPEC_NAME).is_file():
        raise RunFolderError(f"{path}: neither a run folder (no model/{SPEC_NAME}) nor a model folder "
                             f"(no {SPEC_NAME}); train into it first, or point at a .safetensors/.ckpt file")
    model, spec = load_saved_model(model_dir_of(path), expected_model=expected_model)
    calibration_file = calibration_path(path)
    calibration = json.loads(calibration_file.read_text()) if calibration_file.is_file() else None
    run = RunFolder.containing(path)
    members = [model]
    if with_members:
        extra = [Path(p) for p in (calibration or {}).get("ensemble", [])]
        if run is not None and not extra:
            extra = run.member_dirs()
        members += [load_saved_model(model_dir_of(p), expected_model=spec.name)[0] for p in extra]
    return LoadedModel(model, spec, calibration, members, run, path)
