"""The model card (`metadata.json`) written beside each checkpoint of a run.

A checkpoint handed to a colleague or a hospital should say what it is for, what it was trained
on, what it expects as input, how well it did (with confidence intervals) and how far its
probabilities and referral threshold can be trusted. Keys follow MONAI bundle metadata where they
fit; the schema is `model_card.schema.json` beside this file, and every card is validated against
it before it is written.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from importlib import resources
from typing import Any

import jsonschema
import numpy as np
import torch

from dualfuse.config import imbalance_correction
from dualfuse.data.paths import display_path
from dualfuse.evaluation.predictions import Predictor
from dualfuse.models.registry import model_class
from dualfuse.models.spec import ModelSpec
from dualfuse.version import __version__

CARD_FILE = "metadata.json"
SCHEMA_ID = "dualfuse-model-card/1"
INTENDED_USE = (
    "Research and method development only. Not a medical device and not validated for clinical "
    "decisions; every prediction must be reviewed by a qualified clinician. Cases flagged 'refer' "
    "(confidence below the referral threshold) should always go to a specialist."
)
VALUE_RANGES = {"minmax": [0.0, 1.0], None: [0.0, 1.0]}  # zscore and imagenet are unbounded
PACKAGES = ("dualfuse", "timm", "lightning", "torchvision", "grad-cam")


def model_card_schema() -> dict:
    return json.loads(resources.files("dualfuse.evaluation").joinpath("model_card.schema.json").read_text())


def validate_model_card(card: dict) -> None:
    """Raise a one-line `ValueError` naming the first field that breaks the schema."""
    try:
        jsonschema.validate(card, model_card_schema())
    except jsonschema.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ValueError(f"model card field {where}: {error.message}") from None


def _version(package: str) -> str:
    if package == "dualfuse":  # also right when run from a source tree that is not pip-installed
        return __version__
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def _data_source(config: dict, sensitive: bool) -> tuple[str, str]:
    """A description of the training data and its format(s); paths are left out when sensitive."""
    sources = config["data"]["sources"]
    parts = []
    for name, source in sources.items():
        hidden = sensitive or source.get("sensitive")
        where = "path withheld (marked sensitive)" if hidden else display_path(source.get("path", ""))
        parts.append(f"{name}: {source.get('format')} ({where})")
    mode = config["data"].get("mode", "single")
    prefix = "zip mode (independent datasets re-paired each epoch): " if mode == "zip" else ""
    return prefix + "; ".join(parts), ", ".join(sorted({str(s.get("format")) for s in sources.values()}))


def _network_data_format(spec: ModelSpec) -> dict:
    prep = spec.preprocessing
    size = prep.img_size
    inputs = {
        modality: {
            "type": "image", "format": "grayscale" if chans == 1 else "RGB", "num_channels": chans,
            "spatial_shape": [size, size], "dtype": "float32",
            "value_range": VALUE_RANGES.get(prep.normalize, [None, None]),
            "normalization": prep.normalize, "resize": prep.resize,
        }
        for modality, chans in prep.in_chans.items()
    }
    outputs = {
        task: {"type": "probabilities", "format": "classes", "num_channels": len(names), "dtype": "float32",
               "value_range": [0, 1], "channel_def": {str(i): name for i, name in enumerate(names)}}
        for task, names in spec.tasks.items()
    }
    return {"inputs": inputs, "outputs": outputs}


def _performance(metrics: dict) -> dict:
    """Only the `{value, ci_low, ci_high}` entries: the card is a summary, metrics.json has the rest."""
    return {
        task: {split: {name: {k: entry.get(k) for k in ("value", "ci_low", "ci_high")}
                       for name, entry in values.items() if isinstance(entry, dict) and "value" in entry}
               for split, values in splits.items()}
        for task, splits in metrics.get("tasks", {}).items()
    }


def _calibration(evaluation: dict | None) -> dict | None:
    if not evaluation or "uncertainty" not in evaluation:
        return None
    out = {}
    for task, report in evaluation["uncertainty"].items():
        split = "test" if "test" in report["calibration"] else next(iter(report["calibration"]), None)
        calibration = report["calibration"].get(split, {}) if split else {}
        out[task] = {"method": "temperature scaling", "predictor": report.get("predictor_label", "softmax"),
                     "fitted_on": report.get("calibration_split", "val"), "temperature": report["temperature"],
                     # sd of the N(0, sd^2) prior on log T; None: fitted by the NLL alone (calibrations written before it)
                     "log_temperature_prior_sd": report.get("temperature_prior_sd"),
                     "ece_before": calibration.get("softmax", {}).get("ece"),
                     "ece_after": calibration.get("predictor_temperature", {}).get("ece"), "ece_split": split}
    return out


def _finite(value: Any) -> float | None:
    """JSON has no infinity: an unreachable referral threshold (refer everything) is stored as null."""
    return None if value is None or not np.isfinite(value) else float(value)


def _default_predictor(stored: dict | None) -> dict | None:
    """The calibration of the predictor `predict` uses by default (`uncertainty.json`, format 2)."""
    if not stored or stored.get("format") != 2:
        return None
    return stored["predictors"][stored["default"]]


def _referral(stored: dict | None) -> dict | None:
    tasks = _default_predictor(stored)
    if not tasks:
        return None
    return {task: {"threshold": _finite(entry["referral"]["threshold"]),
                   "confidence": entry["referral"].get("confidence", "max_prob"),
                   "target_accuracy": entry["referral"].get("target_accuracy"),
                   "target_coverage": entry["referral"].get("target_coverage"),
                   "reachable": bool(entry["referral"].get("reachable", True)),
                   "guarantee": entry["referral"].get("guarantee")}
            for task, entry in tasks.items()}


def _reference(name: str) -> list[str]:
    """The paper the model class declares (`DualfuseModel.paper`), none for baselines."""
    paper = getattr(model_class(name), "paper", None)
    return [f"{paper.citation}. {paper.url}"] if paper else []


def build_model_card(spec: ModelSpec, config: dict, trained: dict | None = None, evaluation: dict | None = None,
                     stored: dict | None = None, sensitive: bool = False) -> dict:
    """The card of a trained model: its spec, the resolved run config (a dict), the training and
    evaluation summaries (`metrics.json`) and the stored calibration, validated against the schema."""
    trained = trained or {}
    name = spec.name
    tasks = "; ".join(f"{task} ({', '.join(names)})" for task, names in spec.tasks.items())
    data_source, data_type = _data_source(config, sensitive)
    predictor = Predictor.from_key(stored["default"]) if _default_predictor(stored) else None
    mc_samples, ensemble_size = (predictor.samples, predictor.members) if predictor else (0, 1)
    if predictor is None:
        method = "none: deterministic softmax (run `dualfuse evaluate --mc-samples` to calibrate)"
    else:
        method = f"{predictor.label} (predictive entropy, mutual information), calibrated per predictor"
    use_evaluation = bool(evaluation and evaluation.get("tasks"))
    card = {
        "schema": SCHEMA_ID,
        "version": _version("dualfuse"),
        "changelog": {_version("dualfuse"): f"trained {datetime.now(timezone.utc).date().isoformat()} with dualfuse"},
        "pytorch_version": torch.__version__,
        "numpy_version": np.__version__,
        "required_packages_version": {p: _version(p) for p in PACKAGES},
        "name": name,
        "task": f"Image classification: {tasks}",
        "description": f"{name} ({', '.join(spec.modalities)} input"
                       f"{'s' if len(spec.modalities) > 1 else ''}) trained with dualfuse; "
                       f"constructor arguments {json.dumps(spec.kwargs, sort_keys=True, default=str)}.",
        "intended_use": INTENDED_USE,
        "data_source": data_source,
        "data_type": data_type,
        "network_data_format": _network_data_format(spec),
        "performance": {"source": "evaluate" if use_evaluation else "train",
                        "tasks": _performance(evaluation if use_evaluation else trained)},
        "uncertainty": {"method": method, "mc_samples": mc_samples, "ensemble_size": ensemble_size},
        "calibration": _calibration(evaluation),
        "referral": _referral(stored),
        "training": {"epochs_trained": trained.get("epochs_trained"), "train_seconds": trained.get("train_seconds"),
                     "device": trained.get("device"), "seed": int(config.get("train", {}).get("seed", 0)),
                     "imbalance_correction": imbalance_correction(config.get("train", {}))},
        "references": _reference(name),
    }
    validate_model_card(card)
    return card


def card_json(card: dict) -> bytes:
    return (json.dumps(card, indent=2) + "\n").encode()
