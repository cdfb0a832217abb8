"""The main job as a Python API: `train`, `evaluate` and `predict`, each writing to a run folder.

A run folder holds everything needed to repeat, resume or audit a run:

    config.yaml        the fully resolved config
    split.csv          the case → split assignment used
    checkpoints/       best.ckpt and last.ckpt (Lightning, weights_only-loadable, written atomically)
    model/             model.safetensors + model.json: the best weights and how to rebuild them
    metrics.json       per task and split: every metric with its bootstrap confidence interval
    predictions.csv    per case: true class, predicted class, class probabilities
    logs/              CSV metrics and TensorBoard events
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from dualfuse.config import RunConfig, dump_run_config, load_run_config
from dualfuse.data.datamodule import ClassificationDataModule
from dualfuse.data.multimodal import ZipDataset
from dualfuse.data.sources import FileListDataset, FileReader, ManifestDataset, MedMNISTDataset, expand_inputs
from dualfuse.data.transforms import build_transforms
from dualfuse.evaluation.metrics import classification_metrics
from dualfuse.evaluation.model_card import write_model_card
from dualfuse.evaluation.predictions import Predictions, predict_loader, predictions_frame
from dualfuse.evaluation.uncertainty_report import calibrate, task_report
from dualfuse.uncertainty.conformal import prediction_sets
from dualfuse.training.checkpoints import AtomicCheckpointIO, atomic_write_bytes, load_model, load_weights_only, save_model
from dualfuse.training.task import ClassificationTask

MULTI_INPUT_MODELS = ("drifa_net",)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str) -> str:
    """`auto`: bf16 (or fp16) mixed precision on a GPU that has it, full precision on the CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def model_spec(config: RunConfig, data: ClassificationDataModule) -> dict:
    """How to rebuild the model and read its outputs: name, constructor arguments, tasks, inputs."""
    kwargs = dict(config.model.kwargs)
    classes = data.classes
    modalities = data.modalities
    multi_input = config.model.name in MULTI_INPUT_MODELS or "modalities" in kwargs or len(modalities) > 1
    if multi_input:
        kwargs.setdefault("modalities", modalities)
        kwargs.setdefault("num_classes", {task: len(names) for task, names in classes.items()})
        if list(kwargs["modalities"]) != modalities:
            raise ValueError(f"model.kwargs.modalities {list(kwargs['modalities'])} differ from the data's {modalities}")
    else:
        if len(classes) != 1:
            raise ValueError(f"model {config.model.name!r} predicts one task; the data has tasks {list(classes)} "
                             "(use drifa_net for several tasks)")
        kwargs.setdefault("num_classes", len(next(iter(classes.values()))))
    in_chans = kwargs.get("in_chans", 3)
    channels = dict(zip(modalities, in_chans)) if isinstance(in_chans, (list, tuple)) else {m: in_chans for m in modalities}
    spec = {
        "model": {"name": config.model.name, "kwargs": kwargs},
        "tasks": classes,
        "modalities": modalities,
        "preprocessing": {"img_size": config.data.img_size, "resize": config.data.resize,
                          "normalize": config.data.normalize, "in_chans": channels},
    }
    if config.data.mode == "zip":
        spec["task_modality"] = {f"{name}_label": name for name in modalities}
    return spec


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=float) + "\n").encode())


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False).encode())


def has_patient_ids(dataset) -> bool:
    """Bootstrap over patients only when every case names one (a missing id is not one big patient)."""
    records = getattr(dataset, "records", [])
    return not isinstance(dataset, ZipDataset) and bool(records) and all(r.patient_id for r in records)


def split_metrics(predictions: Predictions, spec: dict, grouped: bool, n_bootstrap: int, confidence: float,
                  seed: int) -> dict[str, dict]:
    """Per task: `classification_metrics` on that task's cases (bootstrap over patients if known)."""
    out = {}
    for task, names in spec["tasks"].items():
        view = predictions.for_task(task, spec.get("task_modality", {}).get(task))
        if task not in view.labels or len(view.labels[task]) == 0:
            continue
        out[task] = classification_metrics(
            view.labels[task], view.probs(task), groups=view.patient_ids if grouped else None, class_names=names,
            n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
        )
    return out


def evaluate_datamodule(models, spec: dict, data: ClassificationDataModule, config: RunConfig,
                        device: str | None = None, mc_samples: int = 0, extra_splits: tuple[str, ...] = ()
                        ) -> tuple[dict, pd.DataFrame, dict[str, Predictions]]:
    """Predict every configured split; return `{task: {split: metrics}}`, the per-case table of the
    configured splits, and the raw predictions of every split predicted (`extra_splits` too)."""
    metrics: dict[str, dict] = {task: {} for task in spec["tasks"]}
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
        per_task = split_metrics(predictions, spec, has_patient_ids(dataset), config.eval.n_bootstrap,
                                 config.eval.confidence, config.train.seed)
        for task, values in per_task.items():
            metrics[task][split] = values
        frames.append(predictions_frame(predictions, spec["tasks"], split))
    return metrics, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), raw


def _run_dir(config: RunConfig) -> Path:
    if config.output:
        return Path(config.output)
    return Path("runs") / f"{config.model.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _trainer(config: RunConfig, run_dir: Path, zip_mode: bool) -> tuple[pl.Trainer, ModelCheckpoint]:
    train = config.train
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=train.monitor, mode=train.monitor_mode,
        save_last=True, save_top_k=1, enable_version_counter=False,
    )
    callbacks = [checkpoint, LearningRateMonitor(logging_interval="epoch")]
    if train.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=train.monitor, mode=train.monitor_mode,
                                       patience=train.early_stopping_patience))
    if train.progress_bar:
        callbacks.append(TQDMProgressBar())
    loggers = [CSVLogger(run_dir, name="logs", version="csv"), TensorBoardLogger(run_dir, name="logs", version="tensorboard")]
    trainer = pl.Trainer(
        max_epochs=train.epochs, accelerator=train.accelerator, devices=train.devices, num_nodes=train.num_nodes,
        strategy=train.strategy, precision=resolve_precision(train.precision), gradient_clip_val=train.grad_clip,
        callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()], deterministic=train.deterministic,
        default_root_dir=run_dir, limit_train_batches=train.limit_train_batches, num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1 if zip_mode else 0, enable_progress_bar=train.progress_bar,
        enable_model_summary=False, log_every_n_steps=10,
    )
    return trainer, checkpoint


def train(config: RunConfig, resume: bool = False) -> dict | None:
    """Train, keep the best checkpoint, evaluate it on the configured splits, write the run folder.

    Returns the run summary (also `RUN_DIR/metrics.json`) on the main process, `None` on other DDP
    ranks or when training was interrupted (resume it with `resume=True`).
    """
    run_dir = _run_dir(config)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"nothing to resume: {last} does not exist")
    if resume:
        saved = load_weights_only(last).get("hyper_parameters", {}).get("spec", {}).get("model", {}).get("name")
        if saved != config.model.name:
            raise ValueError(f"{last} is a checkpoint for model {saved!r}, expected {config.model.name!r}")
    if not resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output")
    pl.seed_everything(config.train.seed, workers=True, verbose=False)

    # Data and model are checked before the run folder exists, so a bad config leaves nothing behind.
    data = ClassificationDataModule(config.data, in_chans=1, seed=config.train.seed, split_path=run_dir / "split.csv")
    spec = model_spec(config, data)
    data.in_chans = spec["preprocessing"]["in_chans"]
    task = ClassificationTask(spec, asdict(config.train))
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer, checkpoint = _trainer(config, run_dir, config.data.mode == "zip")
    if trainer.is_global_zero:
        atomic_write_bytes(run_dir / "config.yaml", dump_run_config(config).encode())

    started = time.perf_counter()
    try:
        trainer.fit(task, datamodule=data, ckpt_path=str(last) if resume else None)
    except SystemExit:  # Lightning exits after a graceful Ctrl-C shutdown
        if not trainer.interrupted:
            raise
    train_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return None
    if trainer.interrupted:
        print(f"training interrupted; continue with: dualfuse train --output {run_dir} --resume")
        return None

    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    state = load_weights_only(best)["state_dict"]
    task.model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    save_model(run_dir / "model", task.model, spec)

    data.setup()
    metrics, frame, _ = evaluate_datamodule(task.model, spec, data, config)
    summary = {
        "model": config.model.name,
        "run_dir": str(run_dir),
        "best_checkpoint": best.name,
        "epochs_trained": int(trainer.current_epoch),
        "train_seconds": round(train_seconds, 1),
        "device": default_device(),
        "tasks": metrics,
    }
    _write_json(run_dir / "metrics.json", summary)
    _write_csv(run_dir / "predictions.csv", frame)
    write_model_card(run_dir, sensitive=_sensitive(config))
    return summary


def _sensitive(config: RunConfig) -> bool:
    return any(source.sensitive for source in config.data.sources.values())


def find_run_dir(path: Path) -> Path | None:
    """The run folder a checkpoint or model folder belongs to (the one holding config.yaml)."""
    for candidate in (path, *path.parents[:3]):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def _model_path(path: Path) -> Path:
    """A run folder means its exported best model."""
    return path / "model" if (path / "model" / "model.json").is_file() else path


def load_for_inference(checkpoint: str | Path, expected_model: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The model and its spec from a run folder, model folder, model.safetensors or a .ckpt."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    return load_model(_model_path(checkpoint), expected_model=expected_model)


UNCERTAINTY_FILE = "uncertainty.json"


def _uncertainty_path(path: Path) -> Path:
    """Where the calibration of a saved model lives: beside its model.json."""
    model_dir = _model_path(path)
    if model_dir.is_dir():
        return model_dir / UNCERTAINTY_FILE
    run_dir = find_run_dir(path)
    return (run_dir / "model" if run_dir else path.parent) / UNCERTAINTY_FILE


def _view(predictions: Predictions, spec: dict, task: str) -> Predictions:
    return predictions.for_task(task, spec.get("task_modality", {}).get(task))


def evaluate(checkpoint: str | Path, config: RunConfig | None = None, splits: list[str] | None = None,
             output: str | Path | None = None, mc_samples: int = 0, ensemble: list[str] | None = None,
             target_accuracy: float | None = None, target_coverage: float | None = None, alpha: float = 0.1,
             ood: str | None = None) -> dict:
    """Evaluate a saved model on its run's splits (or the data of `config`), with confidence intervals.

    With `mc_samples` T > 0 (and optionally `ensemble`, more checkpoints of the same model), every
    case gets T MC-dropout samples per model and the metrics use the mean of all K·T; then a
    temperature, a referral threshold (for `target_accuracy`, else `target_coverage`, default 90%)
    and conformal thresholds are fitted on the validation split, stored beside the model
    (`uncertainty.json`, used by `predict`), and calibration, selective prediction, conformal
    coverage and (given `ood`, another dataset) out-of-distribution AUROC are added to metrics.json.
    Writes `metrics.json` and `predictions.csv` to `output` (default: `RUN_DIR/evaluation`).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    model, spec = load_model(_model_path(checkpoint), expected_model=config.model.name if config else None)
    members = [model] + [load_for_inference(p, expected_model=spec["model"]["name"])[0]
                         for p in (ensemble or [])]
    if ensemble and not mc_samples:
        raise ValueError("--ensemble averages MC-dropout samples of every member: give --mc-samples too")
    run_dir = find_run_dir(checkpoint)
    if config is None:
        if run_dir is None:
            raise ValueError(f"{checkpoint}: no config.yaml in its run folder; pass --config with the data to use")
        config = load_run_config(run_dir / "config.yaml")
    if splits:
        config.eval.splits = list(splits)
    split_path = run_dir / "split.csv" if run_dir is not None else None
    data = ClassificationDataModule(config.data, in_chans=spec["preprocessing"]["in_chans"], seed=config.train.seed,
                                    split_path=split_path)
    data.setup()
    metrics, frame, raw = evaluate_datamodule(members, spec, data, config, mc_samples=mc_samples,
                                              extra_splits=("val",) if mc_samples else ())
    summary: dict = {"model": spec["model"]["name"], "checkpoint": str(checkpoint), "tasks": metrics}
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
        for task in spec["tasks"]:
            views = {split: _view(p, spec, task) for split, p in raw.items()}
            stored[task] = calibrate(views["val"], task, target_accuracy, target_coverage, alpha)
            uncertainty[task] = task_report(views, task, stored[task], alpha,
                                            ood=_view(ood_predictions, spec, task) if ood_predictions else None)
        summary.update(mc_samples=mc_samples, ensemble_size=len(members), uncertainty=uncertainty)
        if ood:
            summary["ood_source"] = str(ood)
        _write_json(_uncertainty_path(checkpoint), {
            "mc_samples": mc_samples, "seed": config.train.seed,
            # MC masks are drawn per batch: the same batching reproduces evaluate's samples exactly.
            "batch_size": config.data.eval_batch_size or config.data.batch_size,
            "ensemble": [str(Path(p).resolve()) for p in (ensemble or [])], "tasks": stored,
        })
        # The table shows what `predict` will: temperature-scaled MC means, the referral decision, the set.
        for predictions in raw.values():
            predictions.temperature = {task: entry["temperature"] for task, entry in stored.items()}
        frame = pd.concat([predictions_frame(raw[s], spec["tasks"], s, _referral(stored)) for s in config.eval.splits
                           if s in raw], ignore_index=True)
    out_dir = Path(output) if output else (run_dir or checkpoint.parent) / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "metrics.json", summary)
    _write_csv(out_dir / "predictions.csv", frame)
    if run_dir is not None and (run_dir / "model" / "model.json").is_file():
        write_model_card(run_dir, sensitive=_sensitive(config))  # now with calibration and referral
    summary["output"] = str(out_dir)
    return summary


def _referral(stored: dict) -> dict[str, float]:
    return {task: entry["referral"]["threshold"] for task, entry in stored.items()}


def prediction_dataset(inputs: list[str], spec: dict, split: str | None):
    """Image files and folders, a CSV manifest (one column per modality), or a MedMNIST npz."""
    modalities = spec["modalities"]
    if len(inputs) == 1 and inputs[0].lower().endswith(".csv"):
        return ManifestDataset(inputs[0], modalities=modalities, tasks=())
    if len(inputs) == 1 and inputs[0].lower().endswith(".npz"):
        dataset = MedMNISTDataset(inputs[0], split=split)
        # Predictions never look at labels: drop them so the output has no ground-truth columns.
        return dataset.with_records([type(r)(r.case_id, r.images, {}, r.patient_id, r.split) for r in dataset.records])
    if len(modalities) > 1:
        raise ValueError(f"this model takes {len(modalities)} modalities {modalities}: give a CSV manifest with one "
                         "column per modality")
    return FileListDataset(expand_inputs(inputs), FileReader(), modality=modalities[0])


def prediction_loader(inputs: list[str], spec: dict, split: str | None = None, batch_size: int = 64):
    prep = spec["preprocessing"]
    dataset = prediction_dataset([str(i) for i in inputs], spec, split)
    dataset.transform = build_transforms(
        spec["modalities"], train=False, img_size=prep["img_size"], resize=prep["resize"], normalize=prep["normalize"],
        overrides={m: {"in_chans": prep["in_chans"][m]} for m in spec["modalities"]},
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


def predict(checkpoint: str | Path, inputs: list[str], output: str | Path, split: str | None = None,
            batch_size: int | None = None, mc_samples: int | None = None) -> pd.DataFrame:
    """Class probabilities and the predicted class for every input case, written as CSV to `output`.

    If the model was calibrated (`evaluate --mc-samples`), its temperature, MC samples, ensemble and
    referral threshold are applied: the output gains uncertainty columns, `<task>_refer` ("send this
    case to a specialist") and `<task>_set` (the conformal prediction set, LAC).
    """
    checkpoint = Path(checkpoint)
    model, spec = load_model(_model_path(checkpoint))
    calibration_file = _uncertainty_path(checkpoint)
    stored = json.loads(calibration_file.read_text()) if calibration_file.is_file() else None
    members = [model]
    if stored:
        members += [load_for_inference(p, expected_model=spec["model"]["name"])[0]
                    for p in stored["ensemble"]]
    samples = mc_samples if mc_samples is not None else (stored["mc_samples"] if stored else 0)
    batch_size = batch_size or (stored.get("batch_size") if stored else None) or 64
    loader = prediction_loader([str(i) for i in inputs], spec, split, batch_size)
    predictions = predict_loader(members, loader, spec, default_device(), mc_samples=samples,
                                 seed=stored["seed"] if stored else 0)
    # A deployed model predicts every task it has, whatever labels the input carries.
    predictions.labels = {}
    referral = None
    if stored:
        predictions.temperature = {task: entry["temperature"] for task, entry in stored["tasks"].items()}
        referral = _referral(stored["tasks"])
    frame = predictions_frame(predictions, spec["tasks"], referral=referral)
    if stored:
        for task, entry in stored["tasks"].items():
            sets = prediction_sets(predictions.probs(task), entry["conformal"]["lac"]["qhat"], "lac")
            names = spec["tasks"][task]
            frame[f"{task}_set"] = ["|".join(n for n, keep in zip(names, row) if keep) for row in sets]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(output, frame)
    return frame
