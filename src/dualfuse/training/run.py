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
from dualfuse.evaluation.predictions import Predictions, predict_loader, predictions_frame
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


def _has_patient_ids(dataset) -> bool:
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
            view.labels[task], view.probs[task], groups=view.patient_ids if grouped else None, class_names=names,
            n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
        )
    return out


def evaluate_datamodule(model, spec: dict, data: ClassificationDataModule, config: RunConfig,
                        device: str | None = None) -> tuple[dict, pd.DataFrame]:
    """Predict every configured split; return `{task: {split: metrics}}` and the per-case table."""
    metrics: dict[str, dict] = {task: {} for task in spec["tasks"]}
    frames = []
    for split in config.eval.splits:
        dataset = data.datasets.get(split)
        if dataset is None or len(dataset) == 0:
            continue
        predictions = predict_loader(model, data.eval_dataloader(split), spec, device or default_device())
        per_task = split_metrics(predictions, spec, _has_patient_ids(dataset), config.eval.n_bootstrap,
                                 config.eval.confidence, config.train.seed)
        for task, values in per_task.items():
            metrics[task][split] = values
        frames.append(predictions_frame(predictions, spec["tasks"], split))
    return metrics, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.train.seed, workers=True, verbose=False)

    data = ClassificationDataModule(config.data, in_chans=1, seed=config.train.seed, split_path=run_dir / "split.csv")
    spec = model_spec(config, data)
    data.in_chans = spec["preprocessing"]["in_chans"]
    task = ClassificationTask(spec, asdict(config.train))
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
    metrics, frame = evaluate_datamodule(task.model, spec, data, config)
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
    return summary


def find_run_dir(path: Path) -> Path | None:
    """The run folder a checkpoint or model folder belongs to (the one holding config.yaml)."""
    for candidate in (path, *path.parents[:3]):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def _model_path(path: Path) -> Path:
    """A run folder means its exported best model."""
    return path / "model" if (path / "model" / "model.json").is_file() else path


def evaluate(checkpoint: str | Path, config: RunConfig | None = None, splits: list[str] | None = None,
             output: str | Path | None = None) -> dict:
    """Evaluate a saved model on its run's splits (or the data of `config`), with confidence intervals.

    Writes `metrics.json` and `predictions.csv` to `output` (default: `RUN_DIR/evaluation`).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    model, spec = load_model(_model_path(checkpoint), expected_model=config.model.name if config else None)
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
    metrics, frame = evaluate_datamodule(model, spec, data, config)
    out_dir = Path(output) if output else (run_dir or checkpoint.parent) / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"model": spec["model"]["name"], "checkpoint": str(checkpoint), "tasks": metrics}
    _write_json(out_dir / "metrics.json", summary)
    _write_csv(out_dir / "predictions.csv", frame)
    summary["output"] = str(out_dir)
    return summary


def _prediction_dataset(inputs: list[str], spec: dict, split: str | None):
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


def predict(checkpoint: str | Path, inputs: list[str], output: str | Path, split: str | None = None,
            batch_size: int = 64) -> pd.DataFrame:
    """Class probabilities and the predicted class for every input case, written as CSV to `output`."""
    model, spec = load_model(_model_path(Path(checkpoint)))
    prep = spec["preprocessing"]
    dataset = _prediction_dataset([str(i) for i in inputs], spec, split)
    transforms = build_transforms(
        spec["modalities"], train=False, img_size=prep["img_size"], resize=prep["resize"], normalize=prep["normalize"],
        overrides={m: {"in_chans": prep["in_chans"][m]} for m in spec["modalities"]},
    )
    dataset.transform = transforms
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    # A deployed model predicts every task it has, whatever labels the input carries.
    predictions = predict_loader(model, loader, spec, default_device())
    predictions.labels = {}
    frame = predictions_frame(predictions, spec["tasks"])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(output, frame)
    return frame
