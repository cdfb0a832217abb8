"""`train(config)`: check the data and model, fit, keep the best weights, evaluate, write the run folder."""
from __future__ import annotations

import dataclasses
import re
import warnings
from datetime import datetime
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from dualfuse.api.evaluation import evaluate_datamodule
from dualfuse.api.run_folder import RunFolder
from dualfuse.atomic import remove_stale_temporaries
from dualfuse.config import ConfigError, RunConfig
from dualfuse.data.datamodule import ClassificationDataModule
from dualfuse.device import default_device
from dualfuse.models.registry import model_class
from dualfuse.models.saved import SPEC_NAME, WEIGHTS_NAME, load_weights_only, save_model
from dualfuse.models.saved import load_model as load_saved_model
from dualfuse.models.spec import ModelSpec, Preprocessing
from dualfuse.models.transfer import TransferReport, transfer_weights
from dualfuse.training.fit import check_monitor, fit, rare_class_warnings
from dualfuse.training.task import check_recipe


def spec_from_config(config: RunConfig, data: ClassificationDataModule) -> ModelSpec:
    """How to rebuild the model and read its outputs: name, constructor arguments, tasks, inputs."""
    kwargs = dict(config.model.kwargs)
    classes = data.classes
    modalities = data.modalities
    inputs = model_class(config.model.name).inputs
    multi_input = inputs == "modalities" or (inputs == "either" and ("modalities" in kwargs or len(modalities) > 1))
    if multi_input:
        kwargs.setdefault("modalities", modalities)
        kwargs.setdefault("num_classes", {task: len(names) for task, names in classes.items()})
        if list(kwargs["modalities"]) != modalities:
            raise ConfigError(f"config: model.kwargs.modalities {list(kwargs['modalities'])} differ from the "
                              f"data's {modalities}")
    else:
        if len(classes) != 1:
            raise ConfigError(f"config: model {config.model.name!r} predicts one task; the data has tasks "
                              f"{list(classes)} (use drifa_net for several tasks)")
        if len(modalities) != 1:
            raise ConfigError(f"config: model {config.model.name!r} takes one image; the data has modalities "
                              f"{modalities} (use drifa_net or concat_fusion with modalities)")
        task, names = next(iter(classes.items()))
        kwargs.setdefault("num_classes", {task: len(names)})
    in_chans = kwargs.get("in_chans", 3)
    channels = dict(zip(modalities, in_chans)) if isinstance(in_chans, (list, tuple)) else {m: in_chans for m in modalities}
    spec = ModelSpec(
        name=config.model.name, kwargs=kwargs, tasks=classes, modalities=modalities,
        preprocessing=Preprocessing(img_size=config.data.img_size, resize=config.data.resize,
                                    normalize=config.data.normalize, in_chans=channels),
        task_modality={f"{name}_label": name for name in modalities} if config.data.mode == "zip" else {},
    )
    check_model_arguments(spec)
    return spec


_PROBABILITY = re.compile(r"(^|_)drop(_path)?_rate$")


def check_model_arguments(spec: ModelSpec) -> None:
    """Build the model once on the meta device, turning constructor errors into one line naming the key."""
    for key, value in spec.kwargs.items():
        if _PROBABILITY.search(key) and isinstance(value, (int, float)) and not 0 <= value < 1:
            raise ConfigError(f"config: model.kwargs.{key} is a dropout probability and must be in [0, 1), "
                              f"got {value}")
    try:
        with torch.device("meta"):
            spec.build()
    except TypeError as error:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if unexpected:
            raise ConfigError(f"config: model.kwargs.{unexpected.group(1)}: model {spec.name!r} takes no such "
                              "argument (see `dualfuse models` and the model's docstring)") from None
        raise ConfigError(f"config: model.kwargs ({spec.name}): {' '.join(str(error).split())}") from None
    except ValueError as error:
        raise ConfigError(f"config: model.kwargs ({spec.name}): {' '.join(str(error).split())}") from None


def _run_folder(config: RunConfig) -> RunFolder:
    if config.output:
        return RunFolder(config.output)
    return RunFolder(Path("runs") / f"{config.model.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def member_dirs(run: RunFolder, members: int) -> list[tuple[Path, Path]]:
    """`(training folder, model folder)` of every ensemble member: member 0 is the run itself
    (checkpoints/, logs/, model/), member k >= 1 trains and is saved in `members/<k>/`."""
    return [(run.path, run.model_dir)] + [(run.members_dir / str(k),) * 2 for k in range(1, members)]


def _saved(model_dir: Path) -> bool:
    """A member's model folder holds both files (model.json is written last)."""
    return (model_dir / WEIGHTS_NAME).is_file() and (model_dir / SPEC_NAME).is_file()


def _finished(train_dir: Path, model_dir: Path, epochs: int) -> bool:
    """A member is finished when its model is saved and its last checkpoint has every epoch asked for:
    `--resume --train.epochs N` on a finished run trains on to N epochs."""
    if not _saved(model_dir):
        return False
    last = train_dir / "checkpoints" / "last.ckpt"
    return not last.is_file() or int(load_weights_only(last, map_location="meta").get("epoch", -1)) + 1 >= epochs


def _member_config(config: RunConfig, k: int) -> RunConfig:
    """Member k's config: the run's, with seed `train.seed + k` (initialisation, data order, augmentation, dropout)."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=config.train.seed + k))


def initial_weights(config: RunConfig, spec: ModelSpec) -> tuple[dict | None, TransferReport | None]:
    """The tensors `model.init_from` gives the model (loaded and channel-adapted), and the report."""
    if not config.model.init_from:
        return None, None
    from dualfuse.config import expand_path

    model = spec.build()
    report = transfer_weights(model, spec, expand_path(config.model.init_from, "model.init_from"))
    state = model.state_dict()
    return {name: state[name] for name in report.transferred}, report


def train(config: RunConfig, resume: bool = False, on_transfer=None) -> dict | None:
    """Train, keep the best checkpoint, evaluate it on the configured splits, write the run folder.

    With `train.members` K > 1, K members are trained one after the other on the same split, with
    seeds `train.seed + k`: member 0 is the run's model (checkpoints/, model/), members 1..K-1 are
    model folders `members/<k>/` (each with its own checkpoints/ and logs/), which `load_model`,
    `evaluate` and `predict` use as the run's deep ensemble. metrics.json evaluates member 0.
    `resume=True` skips finished members (their model folder is written) and continues the one
    training stopped in from its last checkpoint. With `model.init_from`, every member starts from
    those weights (heads for new classes re-initialised per member); `on_transfer(report)` is called
    with the `TransferReport` before the first epoch (the CLI prints it as a table).

    Returns the run summary (also `RUN_DIR/metrics.json`) on the main process, `None` on other DDP
    ranks or when training was interrupted (resume it with `resume=True`).
    """
    run = _run_folder(config)
    if resume and not run.last_checkpoint.is_file():
        raise FileNotFoundError(f"nothing to resume: {run.last_checkpoint} does not exist")
    if resume:
        saved = load_weights_only(run.last_checkpoint, map_location="meta").get("hyper_parameters", {}).get(
            "spec", {}).get("model", {})
        if saved.get("name") != config.model.name:
            raise ValueError(f"{run.last_checkpoint} is a checkpoint for model {saved.get('name')!r}, "
                             f"expected {config.model.name!r}")
    if not resume and run.has_checkpoints():
        raise ValueError(f"{run.path} already holds a run; pass --resume to continue it or choose another --output")
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)

    # Data and model are checked before the run folder exists, so a bad config leaves nothing behind.
    data = ClassificationDataModule(config.data, in_chans=1, seed=config.train.seed, split_path=run.split_path)
    spec = spec_from_config(config, data)
    check_monitor(config.train.monitor, list(spec.tasks))
    if config.train.mixup or config.train.cutmix:
        with torch.device("meta"):
            check_recipe(dataclasses.asdict(config.train), spec.build(), list(spec.tasks))
    transferred, transfer = initial_weights(config, spec)  # a bad init_from also leaves nothing behind
    data.in_chans = spec.preprocessing.in_chans
    data.setup()  # splits are carved (and checked) here, before the run folder is written
    for line in rare_class_warnings(config.train, data, spec):
        warnings.warn(line, stacklevel=2)
    if transfer is not None and on_transfer is not None:
        on_transfer(transfer)
    run.prepare()
    folders = member_dirs(run, config.train.members)
    for train_dir, _ in folders[1:]:
        for folder in (train_dir, train_dir / "checkpoints"):
            remove_stale_temporaries(folder)

    first = None  # member 0's FitResult, when it was trained (or continued) by this call
    seconds = 0.0
    is_global_zero = rank_zero_only.rank == 0  # what Lightning's launcher says, until a fit says so itself
    for k, (train_dir, model_dir) in enumerate(folders):
        if resume and _finished(train_dir, model_dir, config.train.epochs):
            continue  # finished before the interruption
        member = _member_config(config, k)
        if k:  # member 0 keeps the seeding above, so a one-member run is what it always was
            pl.seed_everything(member.train.seed, workers=True, verbose=False)
        data.seed = member.train.seed  # data order and augmentation of this member; the split stays the run's
        try:
            result = fit(member, spec, data, train_dir, resume and (train_dir / "checkpoints" / "last.ckpt").is_file(),
                         files_before={"config.yaml": run.config_bytes(config)} if k == 0 else None,
                         initial_weights=transferred)
        finally:
            data.seed = config.train.seed
        seconds += result.seconds
        is_global_zero = result.is_global_zero
        if result.interrupted:
            return {"interrupted": True, "run_dir": str(run.path)} if result.is_global_zero else None
        if result.is_global_zero:  # the spec records what post-hoc adjustment added to the output biases
            save_model(model_dir, result.model, dataclasses.replace(spec, logit_offsets=result.logit_offsets or {}))
        if k == 0:
            first = result
    if not is_global_zero:
        return None

    if first is not None:
        model, best, epochs = first.model, first.best_checkpoint, first.epochs_trained
    else:  # member 0 had finished before the interruption: its saved weights are the best checkpoint's
        model, saved_spec = load_saved_model(run.model_dir, expected_model=config.model.name)
        best = run.checkpoints_dir / "best.ckpt"
        best = best if best.is_file() else run.last_checkpoint
        epochs = int(load_weights_only(run.last_checkpoint, map_location="meta").get("epoch", -1)) + 1
    metrics, frame, _ = evaluate_datamodule([model], spec, data, config)
    summary = {
        "model": config.model.name,
        "run_dir": str(run.path),
        "best_checkpoint": best.name,
        "epochs_trained": epochs,
        "members": config.train.members,
        "train_seconds": round(seconds, 1),
        "device": default_device(),
        "tasks": metrics,
    }
    if transfer is not None:
        summary["init_from"] = transfer.to_dict()
    offsets = first.logit_offsets if first is not None else saved_spec.logit_offsets
    if offsets:
        summary["posthoc_logit_offsets"] = offsets  # what the output biases got after training
    run.write_results(summary, frame)
    run.write_model_card()
    return summary
