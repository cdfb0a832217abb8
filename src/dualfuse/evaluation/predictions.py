"""Per-case predictions of a trained model: logits (and MC samples) per task, as arrays and a table.

Plain PyTorch inference (no Trainer), so `evaluate`, `predict` and the end of `train` share one
code path and give identical numbers for the same case. With `mc_samples > 0` every case also
gets T MC-dropout samples per model (K·T for an ensemble), drawn with the exact fast path.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from dualfuse.models.spec import ModelSpec
from dualfuse.uncertainty.ensemble import ensemble_mc_logits
from dualfuse.uncertainty.measures import uncertainty_measures


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class Predictions:
    """Logits `(N, C)` per task (the first model, eval mode), optional MC samples `(S, N, C)`, labels
    where known, and an optional temperature per task applied before every softmax."""

    case_ids: list[str]
    patient_ids: list[str]
    logits: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    sample_logits: dict[str, np.ndarray] = field(default_factory=dict)
    temperature: dict[str, float] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(self.logits)

    def deterministic_probs(self, task: str) -> np.ndarray:
        return softmax(self.logits[task], self.temperature.get(task, 1.0))

    def sample_probs(self, task: str) -> np.ndarray:
        return softmax(self.sample_logits[task], self.temperature.get(task, 1.0))

    def probs(self, task: str) -> np.ndarray:
        """The reported probabilities: the mean over MC samples if there are any, else the eval-mode softmax."""
        if task in self.sample_logits:
            return self.sample_probs(task).mean(axis=0)
        return self.deterministic_probs(task)

    def task_rows(self, modality: str | None = None) -> np.ndarray:
        """The rows `for_task` keeps: all, or in zip mode the first row of each image of `modality`."""
        if modality is None:
            return np.arange(len(self.case_ids))
        components = [_component(case_id, modality) for case_id in self.case_ids]
        return np.array(sorted({cid: i for i, cid in reversed(list(enumerate(components)))}.values()), dtype=int)

    def for_task(self, task: str, modality: str | None = None) -> Predictions:
        """One task's cases. In zip mode a case id joins one image per modality
        (`mri:a.jpg|xray:train_3`); each task is judged on its own modality's images, once each."""
        rows = self.task_rows(modality)
        ids, patients = self.case_ids, self.patient_ids
        if modality is not None:
            ids = patients = [_component(case_id, modality) for case_id in self.case_ids]
        return Predictions(
            [ids[i] for i in rows], [patients[i] for i in rows], {task: self.logits[task][rows]},
            {task: self.labels[task][rows]} if task in self.labels else {},
            {task: self.sample_logits[task][:, rows]} if task in self.sample_logits else {},
            {task: self.temperature[task]} if task in self.temperature else {},
        )


def _component(case_id: str, modality: str) -> str:
    for part in case_id.split("|"):
        if part.startswith(f"{modality}:"):
            return part[len(modality) + 1:]
    return case_id


def model_inputs(batch: dict, modalities: list[str], model: nn.Module, device: torch.device | str = "cpu"):
    """What `model` takes from a loader batch: a dict of modalities for multi-input models, else one tensor."""
    if model.multi_input:
        return {m: batch[m].to(device) for m in modalities}
    return batch[modalities[0]].to(device)


@torch.no_grad()
def predict_loader(models: nn.Module | Sequence[nn.Module], loader: DataLoader, spec: ModelSpec,
                   device: str | torch.device = "cpu", mc_samples: int = 0, seed: int = 0) -> Predictions:
    """Run the model(s) over `loader`: eval-mode logits of the first model, and with `mc_samples > 0`
    T MC-dropout samples from every model (K·T in all; the MC seeds of batch i derive from `seed + i`)."""
    device = torch.device(device)
    models = [models] if isinstance(models, nn.Module) else list(models)
    models = [model.to(device).eval() for model in models]
    tasks, modalities = list(spec.tasks), list(spec.modalities)
    case_ids, patient_ids = [], []
    logits: dict[str, list] = {t: [] for t in tasks}
    samples: dict[str, list] = {t: [] for t in tasks}
    labels: dict[str, list] = {t: [] for t in tasks}
    for batch_index, batch in enumerate(loader):
        inputs = model_inputs(batch, modalities, models[0], device)
        outputs = models[0](inputs)
        if mc_samples:
            drawn = ensemble_mc_logits(models, inputs, mc_samples, fast=True, seed=seed * 1_000_003 + batch_index)
        for task in tasks:
            logits[task].append(outputs[task].float().cpu().numpy())
            if mc_samples:
                samples[task].append(drawn[task].float().cpu().numpy())
            if task in batch:
                labels[task].append(batch[task].cpu().numpy())
        case_ids.extend(batch["case_id"])
        patient_ids.extend(batch["patient_id"])
    n_classes = {t: len(c) for t, c in spec.tasks.items()}
    return Predictions(
        case_ids, patient_ids,
        {t: np.concatenate(v) if v else np.zeros((0, n_classes[t]), np.float32) for t, v in logits.items()},
        {t: np.concatenate(v) for t, v in labels.items() if v and len(v) == len(logits[t])},
        {t: np.concatenate(v, axis=1) for t, v in samples.items() if v},
    )


def predictions_frame(predictions: Predictions, classes: dict[str, list[str]], split: str | None = None,
                      referral: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per case: ids, then per task the true class (if known), the predicted class, one
    probability column per class (`<task>_prob_<class>`), and with MC samples the uncertainty of the
    prediction (`<task>_entropy`, `_normalized_entropy`, `_expected_entropy`, `_mutual_information`,
    `_variation_ratio`, `_std_<class>`) and, given a referral threshold, `<task>_refer`."""
    columns: dict[str, object] = {"case_id": predictions.case_ids, "patient_id": predictions.patient_ids}
    if split is not None:
        columns["split"] = split
    for task in predictions.tasks:
        names = np.asarray(classes[task], dtype=object)
        probs = predictions.probs(task)
        if task in predictions.labels:
            columns[f"{task}_true"] = names[predictions.labels[task]]
        columns[f"{task}_pred"] = names[probs.argmax(axis=1)] if len(probs) else []
        for index, name in enumerate(classes[task]):
            columns[f"{task}_prob_{name}"] = probs[:, index]
        if task in predictions.sample_logits:
            measures = uncertainty_measures(predictions.sample_probs(task))
            for key in ("predictive_entropy", "normalized_entropy", "expected_entropy", "mutual_information",
                        "variation_ratio"):
                columns[f"{task}_{key.replace('predictive_', '')}"] = measures[key]
            for index, name in enumerate(classes[task]):
                columns[f"{task}_std_{name}"] = measures["std"][:, index]
        if referral and task in referral:
            columns[f"{task}_refer"] = probs.max(axis=1) < referral[task]
    return pd.DataFrame(columns)
