"""Metrics of a model's predictions per task and split, the way `train`, `evaluate` and the report show them."""
from __future__ import annotations

from collections.abc import Sequence

from dualfuse.config import EvalConfig
from dualfuse.data.multimodal import ZipDataset
from dualfuse.evaluation.metrics import classification_metrics
from dualfuse.evaluation.predictions import Predictions
from dualfuse.models.spec import ModelSpec


def has_patient_ids(dataset) -> bool:
    """Bootstrap over patients only when every case names one (a missing id is not one big patient)."""
    records = getattr(dataset, "records", [])
    return not isinstance(dataset, ZipDataset) and bool(records) and all(r.patient_id for r in records)


def task_metrics(view: Predictions, task: str, class_names: Sequence[str], grouped: bool, options: EvalConfig,
                 seed: int = 0) -> dict:
    """`classification_metrics` of one task's view (bootstrap over patients if `grouped`); {} without labels."""
    if task not in view.labels or len(view.labels[task]) == 0:
        return {}
    return classification_metrics(
        view.labels[task], view.probs(task), groups=view.patient_ids if grouped else None, class_names=class_names,
        n_bootstrap=options.n_bootstrap, confidence=options.confidence, seed=seed,
    )


def split_metrics(predictions: Predictions, spec: ModelSpec, grouped: bool, options: EvalConfig,
                  seed: int = 0) -> dict[str, dict]:
    """Per task: the metrics of that task's cases (in zip mode, its own modality's images)."""
    out = {}
    for task, names in spec.tasks.items():
        metrics = task_metrics(predictions.for_task(task, spec.modality_of(task)), task, names, grouped, options, seed)
        if metrics:
            out[task] = metrics
    return out
