"""`predict` and `explain`: a saved model applied to new images, files or folders, a manifest or an npz."""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import torch

from dualfuse.api.loading import load_model
from dualfuse.atomic import atomic_write_bytes
from dualfuse.data.open import open_inputs
from dualfuse.data.transforms import build_transforms
from dualfuse.device import default_device
from dualfuse.evaluation.predictions import predict_loader, predictions_frame
from dualfuse.explain.overlays import explain_batch, safe_name
from dualfuse.models.spec import ModelSpec


def prediction_loader(inputs: list[str], spec: ModelSpec, split: str | None = None, batch_size: int = 64,
                      skip_bad: bool = False) -> torch.utils.data.DataLoader:
    """The inputs, preprocessed exactly as the model's training data was (its spec's preprocessing)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    prep = spec.preprocessing
    dataset = open_inputs([str(i) for i in inputs], spec.modalities, split, skip_bad=skip_bad)
    dataset.transform = build_transforms(
        spec.modalities, train=False, img_size=prep.img_size, resize=prep.resize, normalize=prep.normalize,
        overrides={m: {"in_chans": prep.in_chans[m]} for m in spec.modalities},
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


def _output_file(output: str | Path) -> Path:
    output = Path(output)
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a directory; give the CSV file to write, e.g. "
                                f"{output / 'predictions.csv'}")
    return output


def predict(checkpoint: str | Path, inputs: list[str], output: str | Path, split: str | None = None,
            batch_size: int | None = None, mc_samples: int | None = None, skip_bad: bool = False,
            tta: int | None = None) -> pd.DataFrame:
    """Class probabilities and the predicted class for every input case, written as CSV to `output`.

    The predictor is every ensemble member with `mc_samples` MC samples and `tta` test-time
    augmentation views (defaults: as calibrated). If
    the model was calibrated (`evaluate --mc-samples`), that predictor's own temperature, referral
    threshold and conformal thresholds are applied (fitted now on the run's calibration split if
    `evaluate` did not fit this predictor): the output gains uncertainty columns, `<task>_refer`
    ("send this case to a specialist") and `<task>_set` (the conformal prediction set, LAC). A case's
    numbers do not depend on the batch it is in. With `skip_bad`, unreadable inputs are listed with
    their reason in an `error` column and the rest are predicted.
    """
    output = _output_file(output)
    if mc_samples is not None and mc_samples < 0:
        raise ValueError(f"--mc-samples must be 0 or more, got {mc_samples}")
    loaded = load_model(checkpoint)
    spec = loaded.spec
    if tta is not None and tta < 1:
        raise ValueError(f"--tta must be at least 1 (1: no test-time augmentation), got {tta}")
    predictor = loaded.predictor(mc_samples, tta)
    stored = None
    if loaded.calibration is not None:
        stored = loaded.calibrated(predictor)
        if stored is None:  # never borrow another predictor's temperature and thresholds: fit this one
            warnings.warn(f"{predictor.label} is not calibrated yet; calibrating it on the run's calibration split",
                          stacklevel=2)
            stored = loaded.calibrate(predictor)
    loader = prediction_loader([str(i) for i in inputs], spec, split, batch_size or 64, skip_bad=skip_bad)
    predictions = predict_loader(loaded.members, loader, spec, default_device(), mc_samples=predictor.samples,
                                 seed=loaded.seed, tta=loaded.tta_config(predictor))
    # A deployed model predicts every task it has, whatever labels the input carries.
    predictions.labels = {}
    predictions = predictions.using(predictor, {t: entry["temperature"] for t, entry in (stored or {}).items()})
    frame = predictions_frame(predictions, spec.tasks, calibration=stored)
    skipped = getattr(loader.dataset, "skipped", [])
    if skip_bad:
        frame["error"] = ""
        if skipped:
            shown = [_shown(where, inputs) for where, _ in skipped]
            bad = pd.DataFrame({"case_id": shown,
                                "error": [reason.replace(where, name) for (where, reason), name in zip(skipped, shown)]})
            frame = pd.concat([frame, bad], ignore_index=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, frame.to_csv(index=False).encode())
    frame.attrs["skipped"] = len(skipped)
    return frame


def _shown(where: str, inputs: list[str]) -> str:
    """A skipped file as the output may name it: relative to the folder given, never absolute."""
    path = Path(where.split("#", 1)[0])
    for root in inputs:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            continue
    return path.name


def explain(checkpoint: str | Path, inputs: list[str], output: str | Path, method: str = "gradcam",
            target_class: str | None = None, task: str | None = None, batch_size: int = 16) -> pd.DataFrame:
    """Write one overlay PNG per case and map (one map per modality for multi-input models) to
    `output`, plus `explanations.csv` listing each file with the explained and predicted class."""
    loaded = load_model(checkpoint, with_members=False)
    model, spec = loaded.model, loaded.spec
    task = task or next(iter(spec.tasks))
    if task not in spec.tasks:
        raise ValueError(f"unknown task {task!r}; the model predicts {list(spec.tasks)}")
    names = spec.tasks[task]
    if target_class is not None and target_class not in names:
        raise ValueError(f"unknown class {target_class!r} for task {task!r}; classes are {names}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file; give a folder for the overlay PNGs")
    loader = prediction_loader(inputs, spec, batch_size=batch_size)
    output.mkdir(parents=True, exist_ok=True)
    rows, used = [], {}
    for batch in loader:
        target = None if target_class is None else names.index(target_class)
        for item in explain_batch(model, spec, batch, task, method, target):
            stem = used.setdefault(item.case_id, _unique_stem(safe_name(item.case_id), set(used.values())))
            file = output / f"{stem}_{item.map_name}_{method}.png"
            atomic_write_bytes(file, item.png)
            rows.append({"case_id": item.case_id, "map": item.map_name, "file": file.name, "task": task,
                         "explained_class": names[item.explained_class], "predicted_class": names[item.predicted_class],
                         "probability": item.probability})
    frame = pd.DataFrame(rows)
    atomic_write_bytes(output / "explanations.csv", frame.to_csv(index=False).encode())
    return frame


def _unique_stem(stem: str, taken: set[str]) -> str:
    while stem in taken:
        stem += "_"
    return stem
