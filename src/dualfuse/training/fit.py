"""Fit a model with Lightning: the Trainer, its callbacks and loggers, resume, and the best weights.

Everything about Lightning lives in training/; the API above hands in a config, a `ModelSpec`
and a data module and gets the trained network back.
"""
from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from dualfuse.atomic import atomic_write_bytes
from dualfuse.config import ConfigError, RunConfig
from dualfuse.models.heads import add_logit_offsets, posthoc_logit_offsets
from dualfuse.models.saved import EMA_PREFIX, MODEL_PREFIX
from dualfuse.models.spec import ModelSpec
from dualfuse.training.checkpoints import AtomicCheckpointIO, load_weights_only
from dualfuse.training.task import ClassificationTask


def resolve_precision(precision: str) -> str:
    """`auto`: bf16 (or fp16) mixed precision on a GPU that has it, full precision on the CPU."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def logged_metrics(tasks: list[str]) -> list[str]:
    """Every name `train.monitor` may take: what `ClassificationTask` logs for these tasks."""
    names = ["val/loss", "train/loss_epoch"]
    if len(tasks) == 1:
        return names + ["val/auc", "val/acc"]
    return names + [f"val/{task}/{metric}" for task in tasks for metric in ("auc", "acc")]


def check_monitor(monitor: str, tasks: list[str]) -> None:
    """Fail before the first epoch, not after it, when the monitored metric is never logged."""
    names = logged_metrics(tasks)
    if monitor not in names:
        raise ConfigError(f"config: train.monitor {monitor!r} is not a logged metric; choose one of {names}")


@dataclass
class FitResult:
    """What training produced: the best weights loaded into `model` (on rank zero), with the post-hoc
    logit offsets already in its output biases (`logit_offsets`, None without them)."""

    model: nn.Module
    best_checkpoint: Path
    epochs_trained: int
    seconds: float
    interrupted: bool
    is_global_zero: bool
    logit_offsets: dict[str, list[float]] | None = None


def _keep_csv_history(logger: CSVLogger, history: list[dict], global_step: int) -> None:
    """Lightning's CSV writer deletes metrics.csv when it starts; after a resume, put back the rows of
    the steps the checkpoint already holds (not those of the interrupted epoch, which is rerun), so
    the file keeps the whole run once."""
    kept = [row for row in history if "step" not in row or float(row["step"]) < global_step]
    if not kept:
        return
    writer = logger.experiment
    writer.metrics = kept + writer.metrics
    writer.metrics_keys = sorted(set(writer.metrics_keys).union(*kept))


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def _train_class_counts(data: pl.LightningDataModule, spec: ModelSpec) -> dict[str, np.ndarray]:
    return {task: np.bincount(np.asarray(data.datasets["train"].labels(task)), minlength=len(names)).astype(float)
            for task, names in spec.tasks.items()}


def balanced_class_weights(data: pl.LightningDataModule, spec: ModelSpec) -> dict[str, list[float]]:
    """Per task, N / (C * n_c) from the training split's labels (a class absent from train gets 1)."""
    return {task: [float(counts.sum() / (len(counts) * c)) if c else 1.0 for c in counts]
            for task, counts in _train_class_counts(data, spec).items()}


def log_class_priors(data: pl.LightningDataModule, spec: ModelSpec) -> dict[str, list[float]]:
    """Per task, log(n_c / N) from the training split's labels (a class absent from train counts as one
    case, so its log prior stays finite)."""
    return {task: np.log(np.maximum(counts, 1.0) / counts.sum()).tolist()
            for task, counts in _train_class_counts(data, spec).items()}


RARE_CLASS_CASES = 10  # below this many training cases a class's frequency is too rough to correct by


def rare_class_warnings(train, data: pl.LightningDataModule, spec: ModelSpec) -> list[str]:
    """One line per class that an imbalance correction leans on with fewer than `RARE_CLASS_CASES`
    training cases: its weight or logit offset is then set by a handful of images (or by none)."""
    key = next((k for k in ("class_weights", "logit_adjustment", "posthoc_logit_adjustment") if getattr(train, k)),
               None)
    if key is None:
        return []
    value = getattr(train, key)
    lines = []
    for task, counts in _train_class_counts(data, spec).items():
        total = counts.sum()
        for name, count in zip(spec.tasks[task], counts):
            if count >= RARE_CLASS_CASES:
                continue
            if key == "class_weights":
                effect = (f"its loss weight is {total / (len(counts) * count):.3g}" if count
                          else "the model never sees it")
            else:
                effect = f"its logit moves by {value * np.log(total / max(count, 1.0)):+.2f}"
            seen = "no training case" if count == 0 else f"only {int(count)} training case(s)"
            lines.append(f"train.{key}: class {name!r} of task {task!r} has {seen} of {int(total)}; {effect}, "
                         "set by so few images that its predictions deserve little trust")
    return lines


def fit(config: RunConfig, spec: ModelSpec, data: pl.LightningDataModule, run_dir: Path, resume: bool,
        files_before: dict[str, bytes] | None = None, initial_weights: dict | None = None) -> FitResult:
    """Train `spec` on `data` into `run_dir` (checkpoints/, logs/); on rank zero, first write
    `files_before` (e.g. the resolved config) into `run_dir`. Resumes from `checkpoints/last.ckpt`.
    `initial_weights` (the tensors `model.init_from` transferred) start a fresh run; the rest keeps
    this member's own initialisation. Callers check `train.monitor` first (`check_monitor`), before
    they create anything."""
    train = config.train
    last = run_dir / "checkpoints" / "last.ckpt"
    class_weights = balanced_class_weights(data, spec) if train.class_weights == "balanced" else None
    log_priors = log_class_priors(data, spec) if train.logit_adjustment or train.posthoc_logit_adjustment else None
    task = ClassificationTask(spec.to_dict(), asdict(train),
                              transferred=sorted(initial_weights) if initial_weights is not None else None,
                              class_weights=class_weights, log_priors=log_priors)
    if initial_weights and not resume:
        task.model.load_state_dict(initial_weights, strict=False)
        if task.ema is not None:  # the average starts from the transferred weights too
            task.ema.module.load_state_dict(task.model.state_dict())
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
    csv_logger = CSVLogger(run_dir, name="logs", version="csv")
    history = _read_csv(Path(csv_logger.log_dir) / "metrics.csv") if resume else []
    loggers = [csv_logger, TensorBoardLogger(run_dir, name="logs", version="tensorboard")]
    trainer = pl.Trainer(
        max_epochs=train.epochs, accelerator=train.accelerator, devices=train.devices, num_nodes=train.num_nodes,
        strategy=train.strategy, precision=resolve_precision(train.precision), gradient_clip_val=train.grad_clip,
        callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()], deterministic=train.deterministic,
        default_root_dir=run_dir, limit_train_batches=train.limit_train_batches, num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1 if config.data.mode == "zip" else 0,
        enable_progress_bar=train.progress_bar, enable_model_summary=False, log_every_n_steps=10,
    )
    if trainer.is_global_zero:
        for name, payload in (files_before or {}).items():
            atomic_write_bytes(run_dir / name, payload)
        if resume and history:
            step = int(load_weights_only(last, map_location="meta").get("global_step", 0))
            _keep_csv_history(csv_logger, history, step)

    started = time.perf_counter()
    try:
        trainer.fit(task, datamodule=data, ckpt_path=str(last) if resume else None)
    except SystemExit:  # Lightning exits after a graceful Ctrl-C shutdown
        if not trainer.interrupted:
            raise
    seconds = time.perf_counter() - started
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    offsets = None
    if trainer.is_global_zero and not trainer.interrupted:
        state = load_weights_only(best)["state_dict"]
        prefix = EMA_PREFIX if task.ema is not None else MODEL_PREFIX  # the weights validation chose
        task.model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        offsets = posthoc_logit_offsets(train.posthoc_logit_adjustment, log_priors)
        if offsets:
            add_logit_offsets(task.model, offsets)
    return FitResult(task.model, best, int(trainer.current_epoch), seconds, bool(trainer.interrupted),
                     trainer.is_global_zero, offsets)
