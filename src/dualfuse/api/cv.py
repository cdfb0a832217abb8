"""`cross_validate(config, folds)`: K patient-grouped folds, each an ordinary run, pooled out of fold.

    DIR/fold_<k>/        an ordinary run folder per fold (its split.csv: that fold is val)
    DIR/cv.json          the plan: folds, repeats, test fraction, seed (a rerun must match it)
    DIR/metrics.json     pooled out-of-fold metrics with CIs over patients, and per-fold mean ± sd
    DIR/predictions.csv  the out-of-fold predictions (each case scored by the model that never saw it)
    DIR/config.yaml, split.csv, model/
                         DIR as a run of its own: the K fold models as one ensemble (model/ is
                         fold 0's, the others are its members), calibrated on the shared cal cases

So `evaluate`, `predict`, `report` and `serve` take DIR like any run and use all K models. An
interrupted cv resumes at the fold it stopped in (finished folds are kept, a started one resumes).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from dualfuse.api.run_folder import RunFolder
from dualfuse.atomic import atomic_write_bytes, atomic_write_json
from dualfuse.config import ConfigError, RunConfig, dump_run_config
from dualfuse.data.datamodule import ClassificationDataModule
from dualfuse.data.folds import FoldPlan, plan_folds
from dualfuse.data.splits import load_split, save_split
from dualfuse.evaluation.metrics import classification_metrics
from dualfuse.models.saved import SPEC_NAME, WEIGHTS_NAME

CV_FILE = "cv.json"
CV_FORMAT = 1
OUT_OF_FOLD = "out_of_fold"


def _check_config(config: RunConfig) -> None:
    if config.data.mode != "single":
        raise ConfigError("dualfuse cv: data.mode zip is not supported (cross-validate each dataset on its own)")
    if config.train.members > 1:
        raise ConfigError("dualfuse cv: train.members must be 1 (the K fold models already form the ensemble)")
    if config.data.split_file:
        raise ConfigError("dualfuse cv: data.split_file cannot be combined with cv, which makes the folds' splits")


def _plan(config: RunConfig, folds: int, repeats: int, test_fraction: float) -> tuple[FoldPlan, dict]:
    data = ClassificationDataModule(config.data, seed=config.train.seed)
    (dataset,) = data.sources.values()
    plan = plan_folds(dataset, config.data, folds, repeats, test_fraction, seed=config.train.seed)
    settings = {"format": CV_FORMAT, "folds": folds, "repeats": repeats, "test_fraction": test_fraction,
                "seed": config.train.seed, "cases": {"folds": len(plan.folds[0]) - len(plan.test) - len(plan.cal),
                                                     "test": len(plan.test), "cal": len(plan.cal)},
                "calibration_note": plan.calibration_note}
    return plan, settings


def _check_resumable(out: Path, settings: dict) -> None:
    saved_file = out / CV_FILE
    if not saved_file.is_file():
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} exists and is not a cv folder; choose another --output")
        return
    import json

    saved = json.loads(saved_file.read_text())
    for key in ("folds", "repeats", "test_fraction", "seed"):
        if saved.get(key) != settings[key]:
            raise ValueError(f"{out} holds a cv with {key} {saved.get(key)}, not {settings[key]}; "
                             "continue it with the same settings or choose another --output")


def _fold_finished(fold: RunFolder) -> bool:
    return fold.is_finished() and fold.metrics_path.is_file()


def _pooled_predictions(folds: list[RunFolder], tasks: dict[str, list[str]]) -> pd.DataFrame:
    """Each case's out-of-fold row (its probabilities averaged over repeats), in first-seen order."""
    frames = [pd.read_csv(fold.predictions_path, dtype={"case_id": str, "patient_id": str}, keep_default_na=False)
              .query("split == 'val'").assign(fold=k) for k, fold in enumerate(folds)]
    rows = pd.concat(frames, ignore_index=True)
    probs = [f"{t}_prob_{c}" for t, names in tasks.items() for c in names]
    pooled = rows.groupby("case_id", sort=False).agg(
        {"patient_id": "first", **{f"{t}_true": "first" for t in tasks if f"{t}_true" in rows}, **dict.fromkeys(probs, "mean"),
         "fold": lambda f: "|".join(map(str, f))}).reset_index()
    for task, names in tasks.items():
        columns = [f"{task}_prob_{c}" for c in names]
        pooled.insert(pooled.columns.get_loc(columns[0]), f"{task}_pred",
                      np.asarray(names, dtype=object)[pooled[columns].to_numpy().argmax(axis=1)])
    return pooled.rename(columns={"fold": "folds"})


def _pooled_metrics(pooled: pd.DataFrame, tasks: dict[str, list[str]], config: RunConfig) -> dict:
    grouped = bool(len(pooled)) and bool((pooled["patient_id"] != "").all())
    out = {}
    for task, names in tasks.items():
        if f"{task}_true" not in pooled:
            continue
        y = pooled[f"{task}_true"].map({name: i for i, name in enumerate(names)}).to_numpy()
        probs = pooled[[f"{task}_prob_{c}" for c in names]].to_numpy()
        out[task] = {OUT_OF_FOLD: classification_metrics(
            y, probs, groups=pooled["patient_id"].to_numpy() if grouped else None, class_names=names,
            n_bootstrap=config.eval.n_bootstrap, confidence=config.eval.confidence, seed=config.train.seed)}
    return out


def _per_fold(folds: list[RunFolder]) -> dict:
    """Per task and split: each metric's mean and sd over the folds (their own val and the shared test)."""
    per_fold = [fold.metrics().get("tasks", {}) for fold in folds]
    out: dict = {}
    for task in per_fold[0]:
        for split in per_fold[0][task]:
            for name, entry in per_fold[0][task][split].items():
                if not isinstance(entry, dict) or "value" not in entry:
                    continue
                values = [m[task][split][name]["value"] for m in per_fold
                          if m.get(task, {}).get(split, {}).get(name, {}).get("value") is not None]
                if values:
                    out.setdefault(task, {}).setdefault(split, {})[name] = {
                        "mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                        "folds": len(values)}
    return out


def _write_ensemble_run(out: RunFolder, config: RunConfig, plan: FoldPlan, folds: list[RunFolder]) -> None:
    """DIR as a run: its config, its split (cal and test as in every fold) and fold 0's model as model/."""
    atomic_write_bytes(out.config_path, dump_run_config(dataclasses.replace(config, output=str(out.path))).encode())
    if not out.split_path.is_file():
        save_split(plan.pooled_split(), out.split_path)
    out.model_dir.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_NAME, SPEC_NAME):  # the spec last: a folder with model.json is a finished model
        shutil.copyfile(folds[0].model_dir / name, out.model_dir / f".{name}.tmp")
        (out.model_dir / f".{name}.tmp").replace(out.model_dir / name)


def cross_validate(config: RunConfig, folds: int, repeats: int = 1, test_fraction: float = 0.0,
                   output: str | Path | None = None, calibrate: bool = True, on_fold=None, on_transfer=None) -> dict:
    """Train `repeats` x `folds` fold runs into `output` (default: `config.output`), pool their
    out-of-fold predictions, and make the folder a run whose model is the K-model ensemble
    (calibrated on the shared cal cases when `calibrate`). `on_fold(k, total, fold_dir)` is called
    before each fold trains, `on_transfer` as in `train` (with `model.init_from`). Returns the summary
    written to `DIR/metrics.json`."""
    from dualfuse.api.evaluation import evaluate
    from dualfuse.api.training import train

    _check_config(config)
    if not (output or config.output):
        raise ConfigError("dualfuse cv: give --output DIR")
    out_path = Path(output or config.output)
    plan, settings = _plan(config, folds, repeats, test_fraction)
    _check_resumable(out_path, settings)
    out = RunFolder(out_path)
    out.prepare()
    atomic_write_json(out.path / CV_FILE, settings)
    fold_runs = [RunFolder(out.path / f"fold_{k}") for k in range(len(plan.folds))]
    resumed = [k for k, fold in enumerate(fold_runs) if _fold_finished(fold)]  # trained by an earlier call
    for k, (fold, split) in enumerate(zip(fold_runs, plan.folds)):
        if k in resumed:
            continue
        if on_fold is not None:
            on_fold(k, len(fold_runs), fold.path)
        fold.path.mkdir(parents=True, exist_ok=True)
        if fold.split_path.is_file() and load_split(fold.split_path) != split:
            raise ValueError(f"{fold.split_path} differs from the planned fold {k}; the data changed since the cv "
                             "started: choose another --output")
        save_split(split, fold.split_path)
        # Each fold its own seed (initialisation, data order, dropout): the ensemble's members differ more.
        fold_config = dataclasses.replace(config, output=str(fold.path),
                                          train=dataclasses.replace(config.train, seed=config.train.seed + k))
        summary = train(fold_config, resume=fold.last_checkpoint.is_file(), on_transfer=on_transfer)
        if summary is None:
            return {}
        if summary.get("interrupted"):
            return {"interrupted": True, "run_dir": str(out.path), "fold": k}
    spec = fold_runs[0].spec()
    pooled = _pooled_predictions(fold_runs, spec.tasks)
    summary = {"model": spec.name, "run_dir": str(out.path), "cv": settings,
               "tasks": _pooled_metrics(pooled, spec.tasks, config), "folds": _per_fold(fold_runs),
               "fold_models": [str(fold.path.relative_to(out.path) / "model") for fold in fold_runs],
               # every fold's own time: a resumed cv's folds trained in earlier calls count too
               "train_seconds": round(sum(fold.metrics().get("train_seconds") or 0.0 for fold in fold_runs), 1),
               "folds_resumed": resumed}
    out.write_results(summary, pooled)
    _write_ensemble_run(out, config, plan, fold_runs)
    if calibrate and plan.cal:
        summary["ensemble"] = {task: splits for task, splits in
                               evaluate(out.path, splits=["test"] if plan.test else ["cal"]).get("tasks", {}).items()}
        atomic_write_json(out.metrics_path, summary)
    return summary
