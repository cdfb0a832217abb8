"""`compare`: is model A better than model B on your cases? The paired difference with a 95% CI.

Two rows of a metrics table cannot answer it: each row's CI carries the luck of the test set, which
both models share, so the rows' CIs overlap even where one model is right on every case the other
gets right and more. Scored on the same cases, the difference cancels that luck out. The CIs are those
of docs/benchmarks.md (`dualfuse.evaluation.paired`): a paired bootstrap over cases (whole patients
where a patient has several images) joined with a closed-form interval whose coverage was measured on
small test sets; several seeds per side are averaged and, on one test set, resampled together. A
verdict is "win" or "loss" only where the CI excludes 0.
"""
from __future__ import annotations

import glob
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from dualfuse.api.run_folder import RunFolder
from dualfuse.atomic import atomic_write_json
from dualfuse.evaluation.paired import (
    N_BOOTSTRAP,
    accuracy,
    align_cases,
    balanced_accuracy,
    case_predictions,
    macro_auroc,
    paired_accuracy_difference,
    paired_auc_difference,
    prediction_classes,
    read_predictions,
    verdict,
)

# metric: (its label, the statistic of one side, the paired difference of the two)
METRICS = {
    "auc": ("AUC", macro_auroc, paired_auc_difference),
    "acc": ("accuracy", accuracy, paired_accuracy_difference),
    "balanced_acc": ("balanced accuracy", balanced_accuracy, partial(paired_accuracy_difference, balanced=True)),
}
OUT_OF_FOLD = "out of fold"


def prediction_file(path: str | Path) -> Path:
    """The predictions.csv a path stands for: the file itself, or the one in a run folder (`train`), a cv
    folder (its pooled out-of-fold predictions) or an `evaluate --output` folder."""
    path = Path(path)
    if path.is_dir():
        path = RunFolder(path).predictions_path
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent}: no predictions.csv (give a run folder, a cv folder, an "
                                    "evaluate output folder or a predictions.csv)")
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    elif path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: not a predictions.csv (give a run folder or the CSV that train, cv or evaluate wrote)")
    return path


def expand(pattern: str | Path) -> list[Path]:
    """One path, or every path a quoted glob pattern matches (one run per seed), sorted."""
    text = str(pattern)
    if not glob.has_magic(text):
        return [Path(text)]
    matches = sorted(Path(p) for p in glob.glob(text))
    if not matches:
        raise FileNotFoundError(f"{text}: the pattern matches no file or folder")
    return matches


def _seed_of(path: Path) -> int | None:
    run = RunFolder.containing(path if path.is_dir() else path.parent)
    return run.seed() if run is not None else None


def _paired_seeds(a: list[Path], b: list[Path], names: tuple[str, str]) -> list[tuple[Path, Path]]:
    """Pair each of A's runs with B's run of the same seed (the seed also carves the split, unless a split
    file fixes it) where both sides ran the same seeds; else in the order given. Either way each pair must
    then hold the same test cases."""
    seeds = [[_seed_of(p) for p in side] for side in (a, b)]
    if all(None not in side and len(set(side)) == len(side) for side in seeds) and set(seeds[0]) == set(seeds[1]):
        by_seed = dict(zip(seeds[1], b))
        return [(path, by_seed[seed]) for path, seed in zip(a, seeds[0])]
    if len(a) != len(b):
        raise ValueError(f"{names[0]} has {len(a)} run(s) and {names[1]} {len(b)}: give one run per seed on each side")
    return list(zip(a, b))


def _tasks(frame: pd.DataFrame) -> list[str]:
    return [column[: -len("_true")] for column in frame.columns if column.endswith("_true")]


def _read(path: Path, split: str) -> tuple[pd.DataFrame, str]:
    """The file, read once, and which of its rows a comparison uses: `split`, or all (cv's out-of-fold file)."""
    try:
        frame = read_predictions(path)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' parser and empty-file errors are ValueErrors
        raise ValueError(f"{path}: unreadable CSV: {' '.join(str(error).split())}") from None
    if "case_id" not in frame.columns or not _tasks(frame):
        raise ValueError(f"{path}: not a dualfuse predictions.csv with true labels (no case_id or <task>_true "
                         "column; `predict` writes none: compare what `train`, `cv` or `evaluate` wrote)")
    if "split" not in frame.columns:
        return frame, OUT_OF_FOLD  # cv's pooled file: every case once, scored by the fold model that never saw it
    if split not in set(frame["split"]):
        raise ValueError(f"{path}: no case of split '{split}' (it holds {', '.join(sorted(set(frame['split'])))})")
    return frame, split


def compare(a: str | Path | Sequence[str | Path], b: str | Path | Sequence[str | Path], task: str | None = None,
            split: str = "test", names: tuple[str, str] | None = None, n_bootstrap: int = N_BOOTSTRAP,
            seed: int = 0, output: str | Path | None = None) -> dict:
    """A − B on the same cases for each task both sides predict: macro AUC, accuracy and balanced
    accuracy, each side's mean over seeds and the paired difference with its 95% CI and verdict.

    `a` and `b`: a run folder, cv folder, evaluate output folder or predictions.csv, a glob pattern, or
    a list of them (one per seed, paired by the seed in each run's config). `split` picks the rows of a
    run's predictions (a cv folder's out-of-fold file has none: all its cases are used). The result is
    also written to `output` (JSON) when given."""
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    sides = [[path for item in ([x] if isinstance(x, (str, Path)) else list(x)) for path in expand(item)] for x in (a, b)]
    if not all(sides):
        raise ValueError("give at least one run on each side")
    names = names or tuple(_side_name(x) for x in (a, b))
    files = [[prediction_file(path) for path in side] for side in sides]
    read = {path: _read(path, split) for side in files for path in side}
    used = {where for _, where in read.values()}
    if len(used) > 1:
        raise ValueError(f"{names[0]} and {names[1]} mix a cv folder's out-of-fold predictions with a run's "
                         f"'{split}' split: compare like with like")
    common = [t for t in _tasks(read[files[0][0]][0]) if all(t in _tasks(frame) for frame, _ in read.values())]
    if task is not None and task not in common:
        raise ValueError(f"task '{task}' is not predicted by both sides (common tasks: {', '.join(common) or 'none'})")
    if not common:
        raise ValueError(f"{names[0]} and {names[1]} share no task")
    where = used.pop()
    pairs_of_files = _paired_seeds(files[0], files[1], names)
    result = {"a": {"name": names[0], "predictions": [str(p) for p, _ in pairs_of_files]},
              "b": {"name": names[1], "predictions": [str(p) for _, p in pairs_of_files]},
              "split": where, "seeds": len(pairs_of_files), "n_bootstrap": n_bootstrap, "tasks": {}}
    for name in [task] if task else common:
        result["tasks"][name] = _compare_task([(read[a][0], read[b][0]) for a, b in pairs_of_files], name,
                                              None if where == OUT_OF_FOLD else split, n_bootstrap, seed)
    if output is not None:
        atomic_write_json(Path(output), result)
    return result


def _side_name(side: str | Path | Sequence[str | Path]) -> str:
    """A side as the user named it: the folder (or pattern), not its predictions.csv."""
    items = [side] if isinstance(side, (str, Path)) else list(side)
    first = Path(str(items[0]))
    name = first.parent.name if first.suffix.lower() == ".csv" else first.name
    return name + (f" (+{len(items) - 1} more)" if len(items) > 1 else "")


def _compare_task(frames: list[tuple[pd.DataFrame, pd.DataFrame]], task: str, split: str | None, n_bootstrap: int,
                  seed: int) -> dict:
    pairs, groups, case_ids = [], [], []
    classes = prediction_classes(frames[0][0], task)
    for frame_a, frame_b in frames:
        for frame in (frame_a, frame_b):
            if sorted(prediction_classes(frame, task)) != sorted(classes):
                raise ValueError(f"{frame.attrs['source']} predicts other classes for task '{task}' than "
                                 f"{frames[0][0].attrs['source']}: {prediction_classes(frame, task)} vs {classes}")
        first, other = (case_predictions(frame, task, classes, split) for frame in (frame_a, frame_b))
        side_a, side_b = align_cases(first, other, names=(frame_a.attrs["source"], frame_b.attrs["source"]))
        if len(side_a["label"]) < 2:
            raise ValueError(f"{frame_a.attrs['source']}: {len(side_a['label'])} labelled case(s) of task '{task}'; "
                             "a comparison needs more")
        pairs.append((side_a, side_b))
        groups.append(side_a.get("patient_id"))
        case_ids.append(side_a["case_id"].tolist())
    out = {"classes": classes, "cases": len(pairs[0][0]["label"]),
           "patients": len(set(groups[0])) if groups[0] is not None else None,
           "resampled": "patients" if groups[0] is not None else "cases", "metrics": {}}
    for key, (label, statistic, difference) in METRICS.items():
        per_seed = {side: [statistic(pair[i]["probs"], pair[i]["label"]) for pair in pairs]
                    for i, side in enumerate(("a", "b"))}
        if any(np.isnan(v) for values in per_seed.values() for v in values):
            continue  # an AUC without both classes among the cases
        diff = difference(pairs, n_bootstrap=n_bootstrap, seed=seed, groups=groups, case_ids=case_ids)
        out["metrics"][key] = {"label": label, "a": float(np.mean(per_seed["a"])), "b": float(np.mean(per_seed["b"])),
                               "a_per_seed": per_seed["a"], "b_per_seed": per_seed["b"],
                               "difference": diff, "verdict": verdict(diff)}
        out["seeds_resampled"] = diff["seeds_resampled"]
    return out
