"""`evaluate(run)`: metrics with confidence intervals for a saved model, and with MC samples its calibration.

With `mc_samples` T > 0 (and optionally `ensemble`, more checkpoints of the same model), every case
gets T MC-dropout samples per model and the metrics use the mean of all K·T; then a temperature, a
referral threshold (for `target_accuracy`, else `target_coverage`, default 90%) and conformal
thresholds are fitted on the validation split, stored beside the model (`uncertainty.json`, used by
`predict`), and calibration, selective prediction, conformal coverage and (given `ood`, another
dataset) out-of-distribution AUROC are added to metrics.json.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from dualfuse.api.loading import calibration_path, load_model
from dualfuse.api.prediction import prediction_loader
from dualfuse.api.run_folder import RunFolder, RunFolderError
from dualfuse.atomic import atomic_write_json
from dualfuse.config import RunConfig
from dualfuse.data.datamodule import ClassificationDataModule
from dualfuse.evaluation.predictions import Predictions, predict_loader, predictions_frame
from dualfuse.evaluation.summary import has_patient_ids, split_metrics
from dualfuse.evaluation.uncertainty_report import calibrate, task_report
from dualfuse.models.spec import ModelSpec
from dualfuse.training.fit import default_device


def evaluate_datamodule(models: list, spec: ModelSpec, data: ClassificationDataModule, config: RunConfig,
                        device: str | None = None, mc_samples: int = 0, extra_splits: tuple[str, ...] = ()
                        ) -> tuple[dict, pd.DataFrame, dict[str, Predictions]]:
    """Predict every configured split; return `{task: {split: metrics}}`, the per-case table of the
    configured splits, and the raw predictions of every split predicted (`extra_splits` too)."""
    metrics: dict[str, dict] = {task: {} for task in spec.tasks}
    frames, raw = [], {}
    for split in dict.fromkeys([*config.eval.splits, *extra_splits]):
        dataset = data.datasets.get(split)
        if dataset is None or len(dataset) == 0:
            continue
        predictions = predict_loader(models, data.eval_dataloader(split), spec, device or default_device(),
                                     mc_samples=mc_samples, seed=config.train.seed)
        raw[split] = predictions
        if split not in config.eval.splits:
            continue
        per_task = split_metrics(predictions, spec, has_patient_ids(dataset), config.eval, config.train.seed)
        for task, values in per_task.items():
            metrics[task][split] = values
        frames.append(predictions_frame(predictions, spec.tasks, split))
    return metrics, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), raw


def referral_thresholds(stored: dict) -> dict[str, float]:
    return {task: entry["referral"]["threshold"] for task, entry in stored.items()}


def run_datamodule(spec: ModelSpec, config: RunConfig, run: RunFolder | None) -> ClassificationDataModule:
    """The data of a run, split exactly as it was at training time (its split.csv)."""
    data = ClassificationDataModule(config.data, in_chans=spec.preprocessing.in_chans, seed=config.train.seed,
                                    split_path=run.split_path if run is not None else None)
    data.setup()
    return data


def evaluate(checkpoint: str | Path, config: RunConfig | None = None, splits: list[str] | None = None,
             output: str | Path | None = None, mc_samples: int = 0, ensemble: list[str] | None = None,
             target_accuracy: float | None = None, target_coverage: float | None = None, alpha: float = 0.1,
             ood: str | None = None) -> dict:
    """Evaluate a saved model on its run's splits (or the data of `config`), with confidence intervals.

    Writes `metrics.json` and `predictions.csv` to `output` (default: `RUN_DIR/evaluation`).
    """
    if ensemble and not mc_samples:
        raise ValueError("--ensemble averages MC-dropout samples of every member: give --mc-samples too")
    loaded = load_model(checkpoint, expected_model=config.model.name if config else None, with_members=False)
    spec, run = loaded.spec, loaded.run
    members = [loaded.model] + [load_model(p, expected_model=spec.name, with_members=False).model
                                for p in (ensemble or [])]
    if config is None:
        if run is None:
            raise RunFolderError(f"{checkpoint}: no config.yaml in its run folder; pass --config with the data to use")
        config = run.config()
    if splits:
        config.eval.splits = list(splits)
    data = run_datamodule(spec, config, run)
    metrics, frame, raw = evaluate_datamodule(members, spec, data, config, mc_samples=mc_samples,
                                              extra_splits=("val",) if mc_samples else ())
    summary: dict = {"model": spec.name, "checkpoint": str(checkpoint), "tasks": metrics}
    out_dir = Path(output) if output else (run.evaluation_dir if run else Path(checkpoint).parent / "evaluation")
    if mc_samples:
        if "val" not in raw:
            raise ValueError("calibration needs a validation split, and this data has none")
        ood_predictions = None
        if ood:
            loader = prediction_loader([ood], spec, split="test" if ood.endswith(".npz") else None)
            ood_predictions = predict_loader(members, loader, spec, default_device(), mc_samples, config.train.seed)
        if target_accuracy is None and target_coverage is None:
            target_coverage = 0.9
        stored, uncertainty = {}, {}
        for task in spec.tasks:
            views = {split: p.for_task(task, spec.modality_of(task)) for split, p in raw.items()}
            stored[task] = calibrate(views["val"], task, target_accuracy, target_coverage, alpha)
            ood_view = ood_predictions.for_task(task, spec.modality_of(task)) if ood_predictions else None
            uncertainty[task] = task_report(views, task, stored[task], alpha, ood=ood_view)
        summary.update(mc_samples=mc_samples, ensemble_size=len(members), uncertainty=uncertainty)
        if ood:
            summary["ood_source"] = str(ood)
        # The table shows what `predict` will: temperature-scaled MC means, the referral decision, the set.
        for predictions in raw.values():
            predictions.temperature = {task: entry["temperature"] for task, entry in stored.items()}
        frame = pd.concat([predictions_frame(raw[s], spec.tasks, s, referral_thresholds(stored))
                           for s in config.eval.splits if s in raw], ignore_index=True)
        calibration = {
            "mc_samples": mc_samples, "seed": config.train.seed,
            # MC masks are drawn per batch: the same batching reproduces evaluate's samples exactly.
            "batch_size": config.data.eval_batch_size or config.data.batch_size,
            "ensemble": [str(Path(p).resolve()) for p in (ensemble or [])], "tasks": stored,
        }
        atomic_write_json(calibration_path(Path(checkpoint)), calibration)
    out_dir.mkdir(parents=True, exist_ok=True)
    (run or RunFolder(out_dir)).write_results(summary, frame, out_dir)
    if run is not None and run.is_finished():
        run.write_model_card()  # now with calibration and referral
    summary["output"] = str(out_dir)
    return summary
