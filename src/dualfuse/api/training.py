"""`train(config)`: check the data and model, fit, keep the best weights, evaluate, write the run folder."""
from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import lightning.pytorch as pl

from dualfuse.api.evaluation import evaluate_datamodule
from dualfuse.api.run_folder import RunFolder
from dualfuse.config import ConfigError, RunConfig
from dualfuse.data.datamodule import ClassificationDataModule
from dualfuse.models.registry import model_class
from dualfuse.models.saved import load_weights_only, save_model
from dualfuse.models.spec import ModelSpec, Preprocessing
from dualfuse.training.fit import check_monitor, default_device, fit


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
        import torch

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


def train(config: RunConfig, resume: bool = False) -> dict | None:
    """Train, keep the best checkpoint, evaluate it on the configured splits, write the run folder.

    Returns the run summary (also `RUN_DIR/metrics.json`) on the main process, `None` on other DDP
    ranks or when training was interrupted (resume it with `resume=True`).
    """
    run = _run_folder(config)
    if resume and not run.last_checkpoint.is_file():
        raise FileNotFoundError(f"nothing to resume: {run.last_checkpoint} does not exist")
    if resume:
        saved = load_weights_only(run.last_checkpoint).get("hyper_parameters", {}).get("spec", {}).get("model", {})
        if saved.get("name") != config.model.name:
            raise ValueError(f"{run.last_checkpoint} is a checkpoint for model {saved.get('name')!r}, "
                             f"expected {config.model.name!r}")
    if not resume and run.has_checkpoints():
        raise ValueError(f"{run.path} already holds a run; pass --resume to continue it or choose another --output")
    pl.seed_everything(config.train.seed, workers=True, verbose=False)

    # Data and model are checked before the run folder exists, so a bad config leaves nothing behind.
    data = ClassificationDataModule(config.data, in_chans=1, seed=config.train.seed, split_path=run.split_path)
    spec = spec_from_config(config, data)
    check_monitor(config.train.monitor, list(spec.tasks))
    data.in_chans = spec.preprocessing.in_chans
    data.setup()  # splits are carved (and checked) here, before the run folder is written
    run.prepare()
    result = fit(config, spec, data, run.path, resume, files_before={"config.yaml": run.config_bytes(config)})
    if not result.is_global_zero:
        return None
    if result.interrupted:
        return {"interrupted": True, "run_dir": str(run.path)}

    save_model(run.model_dir, result.model, spec)
    metrics, frame, _ = evaluate_datamodule([result.model], spec, data, config)
    summary = {
        "model": config.model.name,
        "run_dir": str(run.path),
        "best_checkpoint": result.best_checkpoint.name,
        "epochs_trained": result.epochs_trained,
        "train_seconds": round(result.seconds, 1),
        "device": default_device(),
        "tasks": metrics,
    }
    run.write_results(summary, frame)
    run.write_model_card()
    return summary
