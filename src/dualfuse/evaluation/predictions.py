"""Per-case predictions of a trained model: probabilities per task, as arrays and as a table.

Plain PyTorch inference (no Trainer), so `evaluate`, `predict` and the end of `train` share one
code path and give identical numbers for the same case.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class Predictions:
    """Softmax probabilities `(N, C)` per task, with case and patient ids and labels where known."""

    case_ids: list[str]
    patient_ids: list[str]
    probs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def for_task(self, task: str, modality: str | None = None) -> "Predictions":
        """One task's cases. In zip mode a case id joins one image per modality
        (`mri:a.jpg|xray:train_3`); each task is judged on its own modality's images, once each."""
        if modality is None:
            return Predictions(self.case_ids, self.patient_ids, {task: self.probs[task]},
                               {task: self.labels[task]} if task in self.labels else {})
        ids = [_component(case_id, modality) for case_id in self.case_ids]
        first = sorted({cid: i for i, cid in reversed(list(enumerate(ids)))}.values())
        return Predictions([ids[i] for i in first], [ids[i] for i in first], {task: self.probs[task][first]},
                           {task: self.labels[task][first]} if task in self.labels else {})


def _component(case_id: str, modality: str) -> str:
    for part in case_id.split("|"):
        if part.startswith(f"{modality}:"):
            return part[len(modality) + 1:]
    return case_id


def _model_inputs(batch: dict, modalities: list[str], multi_input: bool, device: torch.device):
    if multi_input:
        return {m: batch[m].to(device) for m in modalities}
    return batch[modalities[0]].to(device)


@torch.no_grad()
def predict_loader(model: nn.Module, loader: DataLoader, spec: dict, device: str | torch.device = "cpu") -> Predictions:
    """Run `model` in eval mode over `loader` and collect softmax probabilities per task."""
    device = torch.device(device)
    model = model.to(device).eval()
    tasks, modalities = list(spec["tasks"]), list(spec["modalities"])
    multi_input = bool(getattr(model, "modalities", None))
    case_ids, patient_ids = [], []
    probs: dict[str, list] = {t: [] for t in tasks}
    labels: dict[str, list] = {t: [] for t in tasks}
    for batch in loader:
        outputs = model(_model_inputs(batch, modalities, multi_input, device))
        if isinstance(outputs, torch.Tensor):
            outputs = {tasks[0]: outputs}
        for task in tasks:
            probs[task].append(outputs[task].float().softmax(dim=1).cpu().numpy())
            if task in batch:
                labels[task].append(batch[task].cpu().numpy())
        case_ids.extend(batch["case_id"])
        patient_ids.extend(batch["patient_id"])
    n_classes = {t: len(c) for t, c in spec["tasks"].items()}
    return Predictions(
        case_ids, patient_ids,
        {t: np.concatenate(p) if p else np.zeros((0, n_classes[t]), np.float32) for t, p in probs.items()},
        {t: np.concatenate(v) for t, v in labels.items() if v and len(v) == len(probs[t])},
    )


def predictions_frame(predictions: Predictions, classes: dict[str, list[str]], split: str | None = None) -> pd.DataFrame:
    """One row per case: ids, then per task the true class (if known), the predicted class and one
    probability column per class (`<task>_prob_<class>`)."""
    columns: dict[str, object] = {"case_id": predictions.case_ids, "patient_id": predictions.patient_ids}
    if split is not None:
        columns["split"] = split
    for task, probs in predictions.probs.items():
        names = np.asarray(classes[task], dtype=object)
        if task in predictions.labels:
            columns[f"{task}_true"] = names[predictions.labels[task]]
        columns[f"{task}_pred"] = names[probs.argmax(axis=1)] if len(probs) else []
        for index, name in enumerate(classes[task]):
            columns[f"{task}_prob_{name}"] = probs[:, index]
    return pd.DataFrame(columns)
