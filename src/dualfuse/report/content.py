"""Everything the report shows, computed from a loaded run and its val/test predictions.

The report uses the same functions as `evaluate` (metrics with bootstrap CIs, MC dropout,
temperature, referral, conformal sets), so what a clinician reads is what the saved model does.
Loading the run and choosing its calibration is the API's job (`dualfuse.api.report`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from dualfuse.config import imbalance_correction
from dualfuse.data.datamodule import ClassificationDataModule
from dualfuse.data.paths import display_path
from dualfuse.evaluation.metrics import METRICS
from dualfuse.evaluation.predictions import Predictions, Predictor, model_inputs
from dualfuse.evaluation.summary import has_patient_ids, task_metrics
from dualfuse.evaluation.uncertainty_report import task_report
from dualfuse.explain.embeddings import embed_loader, tsne_map
from dualfuse.explain.gradcam import class_activation_maps
from dualfuse.explain.overlays import display_image, overlay, png_bytes
from dualfuse.models.spec import ModelSpec
from dualfuse.report import figures
from dualfuse.uncertainty.measures import uncertainty_measures
from dualfuse.uncertainty.selective import risk_coverage_curve

METRIC_LABELS = {
    "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC (AUPR)", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
    "f1_macro": "F1 (macro)", "precision_macro": "precision (macro)", "recall_macro": "recall (macro)",
    "sensitivity": "sensitivity", "specificity": "specificity",
}


@dataclass
class GalleryCase:
    title: str
    caption: str
    images: list[tuple[str, bytes]]  # (label, PNG): each modality's input, then its Grad-CAM overlay


@dataclass
class TaskSection:
    name: str
    classes: list[str]
    split: str
    metric_rows: list[dict]
    calibration_rows: list[dict]
    referral: dict
    conformal: dict | None
    cal_split: str = "val"
    warnings: list[str] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    uncertain: list[GalleryCase] = field(default_factory=list)
    confidently_wrong: list[GalleryCase] = field(default_factory=list)


@dataclass
class ReportContent:
    title: str
    created: str
    summary: list[tuple[str, str]]
    data_rows: list[dict]
    uncertainty_method: str
    calibration_source: str
    tasks: list[TaskSection]
    notes: list[str]
    redacted: bool


def _metric_rows(metrics_by_split: dict[str, dict]) -> list[dict]:
    rows = []
    for name in METRICS:
        cells = {}
        for split, metrics in metrics_by_split.items():
            entry = metrics.get(name)
            if not entry or entry.get("value") is None:
                continue
            low, high = entry.get("ci_low"), entry.get("ci_high")
            cells[split] = f"{entry['value']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")
        if cells:
            rows.append({"metric": METRIC_LABELS.get(name, name), **cells})
    return rows


def _calibration_rows(report: dict) -> list[dict]:
    labels = {"softmax": "softmax", "softmax_temperature": "softmax + its temperature",
              "predictor": f"{report['predictor_label']}", "predictor_temperature": f"{report['predictor_label']} + "
              "its temperature"}
    rows = []
    for split, variants in report["calibration"].items():
        for key, label in labels.items():
            if key in variants:
                values = variants[key]
                rows.append({"split": split, "probabilities": label, "ece": values["ece"], "ace": values["ace"],
                             "nll": values["nll"], "brier": values["brier"]})
    return rows


def _class_counts(data: ClassificationDataModule) -> list[dict]:
    """Cases per split and class, read from the records (no image is decoded)."""
    rows = []
    for split, dataset in data.datasets.items():
        members = getattr(dataset, "datasets", {"": dataset})
        for source, part in members.items():
            for task, names in part.classes.items():
                task_name = f"{source}_label" if source else task
                counts = np.bincount([r.labels[task] for r in part.records if task in r.labels], minlength=len(names))
                rows.append({"split": split, "task": task_name, "cases": int(counts.sum()),
                             "classes": ", ".join(f"{n} {c}" for n, c in zip(names, counts))})
    return rows


def _case_label(case_id: str, index: int, split: str, redact: bool) -> str:
    """What the gallery may show about a case: never a path when redacted, only the file name otherwise."""
    if redact:
        return f"{split} case #{index}"
    return case_id.replace("\\", "/").rsplit("/", 1)[-1]


def _collate(samples: list[dict], modalities: list[str]) -> dict:
    return {m: torch.stack([s[m] for s in samples]) for m in modalities}


def _gallery(model, spec: ModelSpec, dataset, rows: np.ndarray, view: Predictions, task: str, modality: str | None,
             order: np.ndarray, redact: bool, split: str, cam_method: str,
             entropy: np.ndarray) -> list[GalleryCase]:
    """Grad-CAM overlays of the chosen view rows (explaining each case's predicted class)."""
    if not len(order):
        return []
    names = spec.tasks[task]
    samples = [dataset[int(rows[i])] for i in order]
    batch = _collate(samples, spec.modalities)
    probs = view.probs(task)[order]
    predicted = probs.argmax(axis=1)
    maps = class_activation_maps(model, model_inputs(batch, spec.modalities, model), predicted.tolist(),
                                 task=task, method=cam_method)
    if modality is not None:  # zip mode: a task is about its own modality's image
        maps = {name: m for name, m in maps.items() if name == modality} or maps
    normalize = spec.preprocessing.normalize
    cases = []
    for k, i in enumerate(order):
        images = []
        for map_name, cams in maps.items():
            source = map_name if map_name in batch else (modality or spec.modalities[0])
            picture = display_image(batch[source][k], normalize)
            images.append((source, png_bytes((picture * 255).round().astype(np.uint8))))
            images.append((f"{source} Grad-CAM", png_bytes(overlay(picture, cams[k]))))
        truth = names[view.labels[task][i]] if task in view.labels else "?"
        caption = (f"true {truth}, predicted {names[predicted[k]]} (p = {probs[k].max():.2f}), "
                   f"entropy {entropy[i]:.2f}")
        cases.append(GalleryCase(_case_label(view.case_ids[i], int(i), split, redact), caption, images))
    return cases


def _operating_point(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> tuple[float, float] | None:
    accepted = confidence >= threshold
    if not np.isfinite(threshold) or not accepted.any():
        return None
    return float(accepted.mean()), float(1 - correct[accepted].mean())


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _task_section(task: str, spec: ModelSpec, model, data: ClassificationDataModule, raw: dict[str, Predictions],
                  stored: dict, config, split: str, cal_split: str, softmax_temperature: float, gallery_size: int,
                  cam_method: str, redact: bool, max_tsne_points: int, device: str, alpha: float) -> TaskSection:
    modality = spec.modality_of(task)
    views = {s: p.for_task(task, modality) for s, p in raw.items()}
    names = spec.tasks[task]
    metrics = {s: task_metrics(v, task, names, has_patient_ids(data.datasets[s]), config.eval, config.train.seed)
               for s, v in views.items()}
    report = task_report(views, task, stored, alpha, cal_split, softmax_temperature)
    predictor = Predictor.from_key(stored["predictor"])
    view = views[split].using(predictor, {task: stored["temperature"]})
    probs, y = view.probs(task), view.labels[task]
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    sampled = view.stochastic
    measures = uncertainty_measures(view.sample_probs(task))
    entropy = measures["predictive_entropy"]

    section = TaskSection(
        name=task, classes=names, split=split, metric_rows=_metric_rows(metrics),
        calibration_rows=_calibration_rows(report), referral=report["referral"],
        conformal=report.get("conformal"), cal_split=cal_split, warnings=report["warnings"],
    )
    section.figures["roc_pr"] = figures.roc_pr_curves(y, probs, names)
    section.figures["confusion_matrix"] = figures.confusion_matrix_plot(metrics[split]["confusion_matrix"], names)
    calibration = report["calibration"][split]
    after_title = f"after: {predictor.label} + its temperature T = {stored['temperature']:.2f}"
    section.figures["reliability"] = figures.reliability_diagram(calibration["softmax"],
                                                                 calibration["predictor_temperature"], after_title)
    threshold = stored["referral"]["threshold"]
    section.figures["risk_coverage"] = figures.risk_coverage_plot(
        risk_coverage_curve(confidence, correct), threshold if np.isfinite(threshold) else None,
        _operating_point(confidence, correct, threshold), report["selective"][split]["aurc"])
    shown = {"predictive entropy": entropy}
    if sampled:
        shown["mutual information"] = measures["mutual_information"]
    section.figures["uncertainty_histograms"] = figures.uncertainty_histograms(shown, correct)

    rows = raw[split].task_rows(modality)
    dataset = data.datasets[split]
    most_uncertain = np.argsort(-entropy, kind="stable")[:gallery_size]
    wrong = np.flatnonzero(~correct)
    confidently_wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:gallery_size]
    common = dict(model=model, spec=spec, dataset=dataset, rows=rows, view=view, task=task, modality=modality,
                  redact=redact, split=split, cam_method=cam_method, entropy=entropy)
    section.uncertain = _gallery(order=most_uncertain, **common)
    section.confidently_wrong = _gallery(order=confidently_wrong, **common)

    chosen = _subsample(len(rows), max_tsne_points, config.train.seed)
    if len(chosen) >= 5:
        loader = DataLoader(Subset(dataset, rows[chosen].tolist()), batch_size=64, shuffle=False)
        features = embed_loader(model, loader, spec, device)
        section.figures["tsne"] = figures.tsne_plot(tsne_map(features, seed=config.train.seed), y[chosen], names,
                                                    correct[chosen], entropy[chosen])
    return section


def build_report(*, spec: ModelSpec, model, members: list, config, data: ClassificationDataModule,
                 raw: dict[str, Predictions], stored: dict, calibration_source: str, notes: list[str], trained: dict,
                 predictor: Predictor, cal_split: str, softmax_temperature: dict[str, float], gallery_size: int = 6, cam_method: str = "gradcam", redact: bool = False,
                 max_tsne_points: int = 1500, device: str = "cpu", alpha: float = 0.1) -> ReportContent:
    """Every table, figure and gallery case of the report, from a loaded run and its predictions.

    `raw` holds the val, calibration (and test) predictions of `members` with `predictor`'s MC samples;
    `stored` that predictor's calibration per task (temperature, referral, conformal), fitted on
    `cal_split`, which the report shows and applies.
    """
    split = "test" if "test" in raw else "val"
    sections = [
        _task_section(task, spec, model, data, raw, stored[task], config, split, cal_split, softmax_temperature[task],
                      gallery_size, cam_method, redact, max_tsne_points, device, alpha)
        for task in spec.tasks
    ]
    params = sum(p.numel() for p in model.parameters())
    summary = [
        ("model", f"{spec.name} ({params / 1e6:.2f} M parameters)"),
        ("inputs", ", ".join(f"{m}: {c} channel(s)" for m, c in spec.preprocessing.in_chans.items())
         + f" at {spec.preprocessing.img_size} px ({spec.preprocessing.resize}, "
           f"normalised: {spec.preprocessing.normalize})"),
        ("tasks", "; ".join(f"{t}: {', '.join(c)}" for t, c in spec.tasks.items())),
        ("data", "; ".join(f"{name}: {source.format}" + ("" if redact else f" ({display_path(source.path)})")
                           for name, source in config.data.sources.items())),
        ("training", f"{trained.get('epochs_trained', '?')} epochs, {trained.get('train_seconds', '?')} s on "
                     f"{trained.get('device', '?')}, seed {config.train.seed}"),
        ("class imbalance", imbalance_correction(vars(config.train))),
        ("uncertainty", predictor.label if predictor.samples or predictor.members > 1
         else "softmax only (no MC dropout, one model)"),
    ]
    return ReportContent(
        title=f"{spec.name} — {', '.join(spec.tasks)}",
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        summary=summary, data_rows=_class_counts(data),
        uncertainty_method=summary[-1][1], calibration_source=calibration_source,
        tasks=sections, notes=notes, redacted=redact,
    )
