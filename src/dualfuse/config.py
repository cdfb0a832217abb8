"""Run configuration: YAML files and command-line overrides, parsed and validated by jsonargparse.

One `RunConfig` describes a whole run (model, data, training, evaluation, output folder). The
same parser reads `--config file.yaml`, dotted overrides such as `--train.epochs 3`, and writes
the fully resolved config beside every run, so any run can be repeated from its own folder.
Unknown keys and values of the wrong type fail with one line naming the key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

SOURCE_FORMATS = ("medmnist", "folder", "manifest")
DATA_MODES = ("single", "zip")


@dataclass
class SourceConfig:
    """One dataset on disk.

    `path` may use environment variables (`${DUALFUSE_DATA}/medmnist/breastmnist.npz`). For a MedMNIST
    source, `download` names the dataset to fetch with the `medmnist` package when `path` is missing.
    """

    format: str = "medmnist"
    path: str = ""
    download: Optional[str] = None
    modalities: Optional[list[str]] = None  # manifest image columns (default: "image")
    tasks: Optional[list[str]] = None  # manifest label columns (default: "label")
    channels: Optional[int] = None  # decode to 1 or 3 channels (default: native)
    classes: Optional[list[str]] = None  # class names in label order (default: from the source)
    sensitive: bool = False  # file paths may identify patients: reports and model cards never show them


@dataclass
class DataConfig:
    """Where images come from, how they are split, and how they are turned into tensors.

    `mode: single` takes one source (one or more modalities per case, e.g. a manifest of MRI
    sequences); `mode: zip` zips two or more single-modality sources into DRIFA-Net's multitask
    tuples, re-paired every epoch (each source's name is its modality, `<name>_label` its task).
    Sources without a validation (or test) split get one carved out, stratified and grouped by
    patient, and the split is saved in the run folder. A calibration split (`cal_fraction` of the
    source, carved from train the same way) fits temperature, referral and conformal thresholds
    only; val keeps choosing the checkpoint and stopping early. With `cal_fraction: 0`, or too few
    cases to carve one, calibration falls back to val and the run says so.
    """

    mode: str = "single"
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    img_size: int = 64
    resize: str = "resize"
    normalize: Optional[str] = "imagenet"
    augment: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    eval_batch_size: Optional[int] = None
    num_workers: int = 2
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    cal_fraction: float = 0.1
    split_file: Optional[str] = None
    zip_length: str = "min"
    max_train_cases: Optional[int] = None
    max_eval_cases: Optional[int] = None
    skip_bad: bool = False


@dataclass
class ModelConfig:
    """A registered model and its constructor arguments.

    `num_classes`, `modalities` and `in_chans` are filled from the data when not given.
    `init_from` (a run folder, model folder, `.safetensors`, `.ckpt` or state-dict file) starts the
    model from those weights: every tensor whose name and shape match, 1 <-> 3 input channels
    adapted, task heads re-initialised where the classes differ (fine-tuning).
    """

    name: str = "dcat"
    kwargs: dict[str, Any] = field(default_factory=dict)
    init_from: Optional[str] = None


@dataclass
class TrainConfig:
    """Optimisation and hardware. `devices`, `num_nodes` and `strategy` go straight to Lightning,
    so a config that trains on a laptop trains on a GPU cluster (e.g. `strategy: ddp`)."""

    epochs: int = 10
    optimizer: str = "adamw"
    lr: float = 1e-3
    backbone_lr: Optional[float] = None  # pretrained backbone (after init_from: the transferred trunk); default lr
    freeze_epochs: int = 0  # that trunk's LR is 0 for the first N epochs, while the new heads settle
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | plateau | none
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    plateau_factor: float = 0.2
    plateau_patience: int = 5
    label_smoothing: float = 0.0
    # Small-data recipe parts, all off by default (see README "Small data"): weight EMA (timm
    # ModelEmaV3; validation, checkpoint choice and the saved model use the averaged weights),
    # mixup / cutmix alphas (timm Mixup, single-image single-task models), "balanced" class
    # weights in the loss (N / (C * n_c) from the training split), or instead logit adjustment: the
    # loss sees logits + tau * log(training prior), so the saved model's argmax is the balanced one;
    # or post-hoc logit adjustment: train plainly, then subtract tau * log(training prior) from the saved
    # model's output biases (the same balanced argmax, no retraining of what the network learned).
    ema_decay: Optional[float] = None
    mixup: float = 0.0
    cutmix: float = 0.0
    class_weights: Optional[str] = None
    logit_adjustment: float = 0.0
    posthoc_logit_adjustment: float = 0.0
    threads: Optional[int] = None  # torch CPU threads (two trainings on 2 cores: give each 1)
    task_weights: Optional[dict[str, float]] = None
    grad_clip: Optional[float] = 1.0
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    early_stopping_patience: Optional[int] = None
    precision: str = "auto"  # auto: bf16/16-mixed on a GPU that has it, else 32-true
    accelerator: str = "auto"
    devices: Union[int, str] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    # Deep ensemble in one run: K members trained on the same split with seeds seed, seed+1, ...; member 0
    # is the run's model/, members 1..K-1 go to members/<k>/ (evaluate and predict use them all).
    members: int = 1
    # "warn": deterministic algorithms wherever PyTorch has them (all of them on the CPU, so runs and
    # resumes repeat exactly), a warning where CUDA has none (bilinear upsampling and adaptive pooling
    # backward, which DCAT uses); true makes those an error, false allows faster non-deterministic kernels.
    deterministic: Union[bool, Literal["warn"]] = "warn"
    limit_train_batches: Union[int, float] = 1.0
    progress_bar: bool = True


@dataclass
class EvalConfig:
    """Final evaluation of the best checkpoint on each split, with bootstrap confidence intervals."""

    splits: list[str] = field(default_factory=lambda: ["val", "test"])
    n_bootstrap: int = 1000
    confidence: float = 0.95


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: Optional[str] = None


class ConfigError(ValueError):
    """A config problem, in one line naming the key."""


def build_parser(prog: str = "dualfuse train") -> ArgumentParser:
    parser = ArgumentParser(
        prog=prog, exit_on_error=False, allow_abbrev=False, description="Train, then evaluate on val and test."
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML run config (see configs/)")
    for name, kind in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        parser.add_argument(f"--{name}", type=kind, default=kind())
    parser.add_argument("--output", type=Optional[str], default=None, help="run folder (default: runs/<model>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    return parser


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def deep_merge(base: dict, overlay: dict) -> dict:
    """`overlay` laid over `base`: nested mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _drop_kwargs_of_other_model(base: dict, overlay: dict) -> dict:
    """A file that switches to another model brings that model's own constructor arguments."""
    new_name = (overlay.get("model") or {}).get("name")
    if new_name and new_name != (base.get("model") or {}).get("name"):
        return {**base, "model": {"name": new_name, "kwargs": {}}}
    return base


def merge_config_files(argv: list[str]) -> list[str]:
    """Fold every `--config FILE` into one, merging nested mappings key by key.

    So an ablation file can hold only what it changes (`model: {kwargs: {refine: none}}`) and be
    stacked on a full config: `--config configs/dcat/paper.yaml --config configs/ablations/dcat_no_cbam.yaml`.
    A file that names a different model replaces the model's arguments instead of merging them.
    """
    merged: dict | None = None
    rest: list[str] = []
    position = 0
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in arg else 2
            path = Path(value)
            if not path.is_file():
                raise ConfigError(f"config: file not found: {value}")
            try:
                content = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as error:
                raise ConfigError(f"config: {path}: not valid YAML ({_one_line(error)})") from None
            if not isinstance(content, dict):
                raise ConfigError(f"config: {path}: expected a mapping of sections, got {type(content).__name__}")
            if merged is None:
                position = len(rest)
            merged = deep_merge(_drop_kwargs_of_other_model(merged or {}, content), content)
            continue
        rest.append(arg)
        i += 1
    if merged is None:
        return rest
    return [*rest[:position], "--config", yaml.safe_dump(merged), *rest[position:]]


def parse_run_args(argv: list[str]) -> tuple[RunConfig, bool]:
    """Parse `dualfuse train` arguments into a validated `RunConfig` and the `--resume` flag."""
    parser = build_parser()
    argv = merge_config_files(list(argv))
    try:
        namespace = parser.instantiate(parser.parse_args(argv))
    except Exception as error:  # jsonargparse raises ArgumentError / ValueError / TypeError variants
        raise ConfigError(f"config: {_one_line(error)}") from None
    config = RunConfig(
        model=namespace.model, data=namespace.data, train=namespace.train, eval=namespace.eval, output=namespace.output
    )
    validate(config)
    return config, bool(namespace.resume)


def load_run_config(path: str | Path) -> RunConfig:
    """Read a saved (resolved) config, e.g. `RUN_DIR/config.yaml`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    config, _ = parse_run_args(["--config", str(path)])
    return config


def dump_run_config(config: RunConfig) -> str:
    """The resolved config as YAML that `--config` reads back."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def _choice(value: object, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"config: {key} must be one of {list(choices)}, got {value!r}")


def validate(config: RunConfig) -> None:
    """Checks jsonargparse's types cannot express, each failing with one line naming the key."""
    data, train = config.data, config.train
    _choice(data.mode, DATA_MODES, "data.mode")
    if not data.sources:
        raise ConfigError("config: data.sources is empty; name at least one dataset")
    if data.mode == "single" and len(data.sources) != 1:
        raise ConfigError(f"config: data.mode single takes one source, got {list(data.sources)} (use mode: zip)")
    if data.mode == "zip" and len(data.sources) < 2:
        raise ConfigError("config: data.mode zip needs two or more sources")
    for name, source in data.sources.items():
        _choice(source.format, SOURCE_FORMATS, f"data.sources.{name}.format")
        if not source.path and not source.download:
            raise ConfigError(f"config: data.sources.{name}.path is empty")
        for key in ("modalities", "tasks", "classes"):
            values = getattr(source, key)
            if values is not None and (not values or len(set(values)) != len(values)):
                raise ConfigError(f"config: data.sources.{name}.{key} must be a non-empty list of distinct names, got {values}")
        if source.channels is not None:
            _choice(source.channels, (1, 3), f"data.sources.{name}.channels")
    if data.img_size < 8:
        raise ConfigError(f"config: data.img_size must be at least 8, got {data.img_size}")
    _at_least(data.batch_size, 1, "data.batch_size")
    _at_least(data.eval_batch_size, 1, "data.eval_batch_size")
    _at_least(data.num_workers, 0, "data.num_workers")
    _at_least(data.max_train_cases, 1, "data.max_train_cases")
    _at_least(data.max_eval_cases, 1, "data.max_eval_cases")
    for key in ("val_fraction", "test_fraction", "cal_fraction"):
        value = getattr(data, key)
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ConfigError(f"config: data.{key} must be in [0, 1), got {value}")
    if data.val_fraction + data.test_fraction + data.cal_fraction >= 1:
        raise ConfigError(f"config: data.val_fraction + data.test_fraction + data.cal_fraction must be below 1 (something "
                          f"must be left to train on), got {data.val_fraction} + {data.test_fraction} + {data.cal_fraction}")
    _choice(data.zip_length, ("min", "max"), "data.zip_length")
    _choice(train.optimizer, ("adamw", "adam"), "train.optimizer")
    _choice(train.scheduler, ("cosine", "plateau", "none"), "train.scheduler")
    _choice(train.monitor_mode, ("min", "max"), "train.monitor_mode")
    if train.epochs < 1:
        raise ConfigError(f"config: train.epochs must be at least 1, got {train.epochs}")
    if train.lr <= 0:
        raise ConfigError(f"config: train.lr must be positive, got {train.lr}")
    _positive(train.backbone_lr, "train.backbone_lr")
    _at_least(train.freeze_epochs, 0, "train.freeze_epochs")
    _at_least(train.threads, 1, "train.threads")
    _at_least(train.mixup, 0, "train.mixup")
    _at_least(train.cutmix, 0, "train.cutmix")
    if train.ema_decay is not None and not 0 < train.ema_decay < 1:
        raise ConfigError(f"config: train.ema_decay must be in (0, 1), e.g. 0.999, got {train.ema_decay}")
    if train.class_weights is not None:
        _choice(train.class_weights, ("balanced",), "train.class_weights")
    _at_least(train.logit_adjustment, 0, "train.logit_adjustment")
    _at_least(train.posthoc_logit_adjustment, 0, "train.posthoc_logit_adjustment")
    corrections = [key for key, on in (("train.class_weights", train.class_weights is not None),
                                       ("train.logit_adjustment", train.logit_adjustment),
                                       ("train.posthoc_logit_adjustment", train.posthoc_logit_adjustment)) if on]
    if len(corrections) > 1:
        raise ConfigError(f"config: {' and '.join(corrections)} each correct for class imbalance; set only one of them")
    if config.model.init_from is not None:
        source = expand_path(config.model.init_from, "model.init_from")
        if not source.exists():
            raise ConfigError(f"config: model.init_from {source} does not exist")
    _positive(train.grad_clip, "train.grad_clip")
    _at_least(train.weight_decay, 0, "train.weight_decay")
    _at_least(train.warmup_epochs, 0, "train.warmup_epochs")
    _at_least(train.min_lr, 0, "train.min_lr")
    _at_least(train.plateau_patience, 0, "train.plateau_patience")
    _at_least(train.early_stopping_patience, 0, "train.early_stopping_patience")
    _at_least(train.num_nodes, 1, "train.num_nodes")
    _at_least(train.members, 1, "train.members")
    if not 0 < train.plateau_factor < 1:
        raise ConfigError(f"config: train.plateau_factor must be in (0, 1), got {train.plateau_factor}")
    if not 0 <= train.label_smoothing < 1:
        raise ConfigError(f"config: train.label_smoothing must be in [0, 1), got {train.label_smoothing}")
    for task, weight in (train.task_weights or {}).items():
        _at_least(weight, 0, f"train.task_weights.{task}")
    if isinstance(train.limit_train_batches, bool) or train.limit_train_batches <= 0 or (
        isinstance(train.limit_train_batches, float) and train.limit_train_batches > 1
    ):
        raise ConfigError("config: train.limit_train_batches must be a fraction in (0, 1] or a number of batches >= 1, "
                          f"got {train.limit_train_batches}")
    _at_least(config.eval.n_bootstrap, 0, "eval.n_bootstrap")
    if not 0 < config.eval.confidence < 1:
        raise ConfigError(f"config: eval.confidence must be in (0, 1), got {config.eval.confidence}")
    if len(set(config.eval.splits)) != len(config.eval.splits):
        raise ConfigError(f"config: eval.splits lists a split twice: {config.eval.splits}")
    for split in config.eval.splits:
        _choice(split, ("train", "val", "test"), "eval.splits")


def imbalance_correction(train: dict) -> str:
    """How the saved model picks its class when classes are not equally common, in words for the model
    card and the report: a clinician reading "predicted: mel" should know which rule named it."""
    equal = "probabilities and the predicted class are those of a set where every class is equally common"
    if train.get("posthoc_logit_adjustment"):
        return (f"post-hoc logit adjustment (tau = {train['posthoc_logit_adjustment']:g}): trained plainly, then "
                f"-tau * log(training class frequency) added to the logits; {equal}")
    if train.get("logit_adjustment"):
        return f"logit-adjusted loss (tau = {train['logit_adjustment']:g}); {equal}"
    if train.get("class_weights") == "balanced":
        return "balanced class weights in the loss (N / (C * n_c)): rare classes weigh more in training"
    return "none: the predicted class is the most probable one at the training set's class frequencies"


def _at_least(value: float | None, low: float, key: str) -> None:
    """`value` (when set) is a finite number >= `low`; else one line naming `key`."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise ConfigError(f"config: {key} must be at least {low}, got {value}")


def _positive(value: float | None, key: str) -> None:
    """`value` (when set) is a finite number > 0; else one line naming `key`."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"config: {key} must be positive, got {value}")


_ENV_PATTERN = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand_path(path: str, key: str) -> Path:
    """Expand `${VAR}` in a config path; an unset variable is an error naming it, not a silent ''."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise ConfigError(f"config: {key} uses ${{{name}}}, which is not set (e.g. export {name}=../shared/data)")
        return os.environ[name]

    return Path(_ENV_PATTERN.sub(replace, path)).expanduser()
