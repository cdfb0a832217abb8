"""Reproducible train/val/cal/test assignment: stratified by class, grouped by patient, saved to disk.

Grouping matters more than stratification in medical imaging: neighbouring CT slices or repeat
scans of one patient are near-identical, so an image-level split puts the same patient in train and
test and inflates every metric. When records carry ``patient_id`` all of a patient's cases land in
one split; stratification is then approximate (``StratifiedGroupKFold`` balances classes over whole
groups). Splits are plain ``{case_id: split}`` maps so they can be saved next to a run and re-applied.
The vocabulary is ``SPLITS``: train, val (checkpoint selection, early stopping), cal (calibration only:
temperature, referral and conformal thresholds; see ``carve_calibration``) and test.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import (
    GroupKFold,
    GroupShuffleSplit,
    KFold,
    ShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    StratifiedShuffleSplit,
)

from dualfuse.data.base import CaseDataset, CaseRecord, DataError

__all__ = ["MIN_CAL_POOL", "MIN_CAL_PER_CLASS", "SPLITS", "apply_split", "carve_calibration", "kfold_splits",
           "load_split", "make_split", "save_split", "split_indices"]

SPLITS = ("train", "val", "cal", "test")
MIN_CAL_POOL = 100  # a training pool smaller than this gets no calibration split
MIN_CAL_PER_CLASS = 2  # every class keeps at least this many cases (patients, when grouped) in cal and in train
Records = CaseDataset | Sequence[CaseRecord]


def _records(records: Records) -> list[CaseRecord]:
    return list(records.records if isinstance(records, CaseDataset) else records)


def _case_ids(records: Sequence[CaseRecord]) -> list[str]:
    ids = [r.case_id for r in records]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"case {dup}", "case id occurs more than once; splits need unique case ids")
    return ids


def _labels_and_groups(
    records: Sequence[CaseRecord], task: str | None, group_by_patient: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels of ``task`` (the first task when None; -1 where unlabelled) and patient groups.

    Groups are None when no record has a patient id; a record without one is its own group.
    """
    if task is None:
        task = next((t for r in records for t in r.labels), None)
    labels = np.array([r.labels.get(task, -1) if task else -1 for r in records], dtype=np.int64)
    if not group_by_patient or all(r.patient_id is None for r in records):
        return labels, None
    return labels, np.array([r.patient_id if r.patient_id is not None else f"case:{r.case_id}" for r in records])


def _splitter(fraction: float, seed: int, stratified: bool, grouped: bool):
    """The scikit-learn splitter whose first ``split`` holds out about ``fraction`` of the data.

    Grouped + stratified has no shuffle-split in scikit-learn, so one fold of a
    ``StratifiedGroupKFold`` with ``round(1 / fraction)`` folds is held out: the fraction is then
    1/k, e.g. 0.2 exactly, 0.15 -> 1/7.
    """
    if grouped and stratified:
        return StratifiedGroupKFold(n_splits=max(2, round(1 / fraction)), shuffle=True, random_state=seed)
    if grouped:
        return GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    if stratified:
        return StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    return ShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)


def _can_stratify(labels: np.ndarray, n_splits: int = 2) -> bool:
    """Stratification needs labels on every case and at least ``n_splits`` cases per class."""
    if len(labels) == 0 or (labels < 0).any():
        return False
    return int(np.unique(labels, return_counts=True)[1].min()) >= n_splits


def _hold_out(
    labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out) with ``fraction`` of the cases held out."""
    index = np.arange(len(labels))
    stratified = stratify and _can_stratify(labels)
    splitter = _splitter(fraction, seed, stratified, groups is not None)
    rest, held = next(splitter.split(index, labels if stratified else None, groups))
    return rest, held


def split_indices(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | np.ndarray | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    stratify: bool = True,
) -> np.ndarray:
    """Split name (``"train"``, ``"val"``, ``"test"``) for each position of ``labels``.

    Test is drawn first from everything, val second from the rest, so changing ``val_fraction``
    never moves a case into or out of the test set. Fractions are of all cases.
    """
    labels = np.asarray(labels, dtype=np.int64)
    groups = None if groups is None else np.asarray(groups)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum below 1")
    names = np.full(len(labels), "train", dtype=object)
    remaining = np.arange(len(labels))
    for name, fraction in (("test", test_fraction), ("val", val_fraction / (1 - test_fraction))):
        if fraction <= 0:
            continue
        sub_groups = None if groups is None else groups[remaining]
        rest, held = _hold_out(labels[remaining], sub_groups, fraction, seed, stratify)
        names[remaining[held]] = name
        remaining = remaining[rest]
    return names


def make_split(
    records: Records,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    stratify: bool = True,
    group_by_patient: bool = True,
    task: str | None = None,
) -> dict[str, str]:
    """``{case_id: split}`` for a dataset or records, stratified on ``task`` (default: first task)
    and grouped by ``patient_id`` where records have one.

    A class with fewer cases (patients, when grouped) than the splits carved cannot be in every
    split: that is a ``DataError`` naming the class and its count, not a model whose val/test lack it.
    """
    class_names = _class_names(records, task)
    records = _records(records)
    ids = _case_ids(records)
    labels, groups = _labels_and_groups(records, task, group_by_patient)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if needed > 1:
        _check_classes_fit(labels, groups, needed, class_names)
    names = split_indices(labels, groups, val_fraction, test_fraction, seed, stratify)
    return dict(zip(ids, (str(n) for n in names)))


def _class_names(records: Records, task: str | None) -> list[str] | None:
    """The class names of ``task`` (default: the first) when ``records`` is a dataset, else None."""
    if not isinstance(records, CaseDataset) or not records.classes:
        return None
    return records.classes.get(task or next(iter(records.classes)))


def _check_classes_fit(labels: np.ndarray, groups: np.ndarray | None, needed: int, names: Sequence[str] | None) -> None:
    """Every labelled class needs at least ``needed`` cases (or patients) to appear in every split."""
    for label in np.unique(labels[labels >= 0]):
        members = labels == label
        count = int(members.sum()) if groups is None else len(np.unique(groups[members]))
        if count < needed:
            name = names[label] if names is not None and label < len(names) else str(label)
            unit = "patient" if groups is not None else "case"
            raise DataError(f"class {name!r}", f"only {count} {unit}(s), but carving train/val/test puts it in "
                            f"{needed} splits; add {unit}s, drop the class, or give a split file (data.split_file)")


def carve_calibration(
    pool: Records,
    fraction: float,
    seed: int = 0,
    stratify: bool = True,
    group_by_patient: bool = True,
    task: str | None = None,
    min_pool: int = MIN_CAL_POOL,
    min_per_class: int = MIN_CAL_PER_CLASS,
) -> tuple[dict[str, str], str | None]:
    """Hold ``fraction`` of a training ``pool`` out as ``"cal"``: ``({case_id: "train" | "cal"}, None)``.

    The same machinery as ``make_split`` (stratified on ``task``, default the first; grouped by
    patient; seeded), so a run repeats exactly. When there is no room, nothing is carved and the
    answer is ``({case_id: "train"}, reason)``, ``reason`` a plain phrase ("too few cases: ..."):
    the pool has fewer than ``min_pool`` cases, or some class (of any task) would keep fewer than
    ``min_per_class`` cases (patients, when grouped) in cal or in train.
    """
    class_names = pool.classes if isinstance(pool, CaseDataset) and pool.classes else None
    records = _records(pool)
    ids = _case_ids(records)
    everything_train = dict.fromkeys(ids, "train")
    if fraction <= 0:
        return everything_train, "the calibration fraction is 0"
    if len(records) < min_pool:
        return everything_train, f"too few cases: the training pool has {len(records)} cases, under {min_pool}"
    labels, groups = _labels_and_groups(records, task, group_by_patient)
    try:
        with warnings.catch_warnings():  # a class smaller than the folds: reported below, in words
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            _, held = _hold_out(labels, groups, min(fraction, 0.5), seed, stratify)
    except ValueError:  # fewer patients than folds
        count = len(records) if groups is None else len(np.unique(groups))
        unit = "case" if groups is None else "patient"
        return everything_train, f"too few cases: the training pool has {count} {unit}s, too few to hold {fraction:.0%} out"
    in_cal = np.zeros(len(records), dtype=bool)
    in_cal[held] = True
    tasks = list(class_names) if class_names else sorted({t for r in records for t in r.labels})
    for name in tasks:
        task_labels = np.array([r.labels.get(name, -1) for r in records], dtype=np.int64)
        names = class_names.get(name) if class_names else None
        shortfall = _class_shortfall(task_labels, groups, in_cal, min_per_class, names)
        if shortfall:
            return everything_train, f"too few cases: {shortfall}"
    return {i: ("cal" if c else "train") for i, c in zip(ids, in_cal)}, None


def _class_shortfall(labels: np.ndarray, groups: np.ndarray | None, in_cal: np.ndarray, needed: int,
                     names: Sequence[str] | None) -> str | None:
    """``"class 'x' would have 1 case in cal"`` for the first class short of ``needed`` in cal or train."""
    unit = "case" if groups is None else "patient"
    for label in np.unique(labels[labels >= 0]):
        members = labels == label
        for part, where in (("cal", in_cal), ("train", ~in_cal)):
            chosen = members & where
            count = int(chosen.sum()) if groups is None else len(np.unique(groups[chosen]))
            if count < needed:
                name = names[label] if names is not None and label < len(names) else str(label)
                return f"class {name!r} would have {count} {unit}{'' if count == 1 else 's'} in {part}"
    return None


def kfold_splits(
    records: Records,
    n_splits: int = 5,
    seed: int = 0,
    stratify: bool = True,
    group_by_patient: bool = True,
    task: str | None = None,
) -> list[dict[str, str]]:
    """One ``{case_id: "train" | "val"}`` map per fold; every case is ``"val"`` in exactly one fold.

    Hold out the test set before calling this: cross-validation should never see it.
    """
    records = _records(records)
    ids = _case_ids(records)
    labels, groups = _labels_and_groups(records, task, group_by_patient)
    stratified = stratify and _can_stratify(labels, n_splits)
    if groups is not None:
        splitter = (
            StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed) if stratified else GroupKFold(n_splits)
        )
    else:
        splitter = (StratifiedKFold if stratified else KFold)(n_splits, shuffle=True, random_state=seed)
    folds = []
    for _, val in splitter.split(np.arange(len(ids)), labels if stratified else None, groups):
        names = np.full(len(ids), "train", dtype=object)
        names[val] = "val"
        folds.append(dict(zip(ids, (str(n) for n in names))))
    return folds


def save_split(split: Mapping[str, str], path: str | Path) -> Path:
    """Write ``{case_id: split}`` as CSV (``.csv``: columns case_id,split) or JSON (anything else)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case_id", "split"])
            writer.writerows(split.items())
    else:
        path.write_text(json.dumps(dict(split), indent=1) + "\n")
    return path


def load_split(path: str | Path) -> dict[str, str]:
    """Read a file written by ``save_split``; malformed files raise ``DataError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "split file not found")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None or not {"case_id", "split"} <= set(reader.fieldnames):
                    raise DataError(path, f"split CSV needs columns case_id,split; got {reader.fieldnames}")
                rows = [(row["case_id"], row["split"]) for row in reader]
        else:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise DataError(path, "split JSON must be an object {case_id: split}")
            rows = list(data.items())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise DataError(path, f"unreadable split file ({error})") from error
    split = dict(rows)
    if len(split) != len(rows):
        raise DataError(path, "a case id is listed more than once")
    bad = [name for name in split.values() if not isinstance(name, str) or not name]
    if bad:
        raise DataError(path, f"every split name must be a non-empty string, got {bad[0]!r}")
    return split


def apply_split(records: Records, split: Mapping[str, str], source: object = "split") -> Records:
    """Set each record's ``split`` from ``split``; a dataset comes back as a dataset view.

    The split must cover exactly the dataset's cases: a missing case (the data changed since the split
    was saved) or an extra one (a different dataset) raises ``DataError`` instead of silently
    training on a different partition.
    """
    items = _records(records)
    ids = _case_ids(items)
    missing = [i for i in ids if i not in split]
    extra = sorted(set(split) - set(ids))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} dataset case(s) not in the split (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} split case(s) not in the dataset (e.g. {extra[0]!r})")
        raise DataError(source, "; ".join(parts))
    updated = [dataclasses.replace(r, split=split[r.case_id]) for r in items]
    return records.with_records(updated) if isinstance(records, CaseDataset) else updated
