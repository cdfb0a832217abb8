"""Splits: stratified, patient-grouped, reproducible, and strict when re-applied."""
from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from dualfuse.data.base import CaseRecord, DataError, ImageRef
from dualfuse.data.splits import apply_split, kfold_splits, load_split, make_split, save_split, split_indices


def _records(patients: int = 150, seed: int = 0, with_patients: bool = True) -> list[CaseRecord]:
    """Patients with 1-6 cases each, ~30% positive, labels constant per patient (as in real data)."""
    rng = np.random.default_rng(seed)
    records = []
    for p in range(patients):
        label = int(rng.random() < 0.3)
        for k in range(int(rng.integers(1, 7))):
            records.append(
                CaseRecord(
                    f"p{p:03d}_{k}",
                    {"image": ImageRef(f"p{p:03d}_{k}.png")},
                    {"label": label},
                    patient_id=f"p{p:03d}" if with_patients else None,
                )
            )
    return records


def _positive_rate(records, split, name):
    labels = [r.labels["label"] for r in records if split[r.case_id] == name]
    return np.mean(labels), len(labels)


def test_grouped_split_keeps_patients_together_and_stratifies():
    records = _records()
    split = make_split(records, val_fraction=0.15, test_fraction=0.2, seed=3)
    assert set(split) == {r.case_id for r in records}
    splits_of_patient = defaultdict(set)
    for record in records:
        splits_of_patient[record.patient_id].add(split[record.case_id])
    assert all(len(s) == 1 for s in splits_of_patient.values())
    overall = np.mean([r.labels["label"] for r in records])
    for name, low, high in (("train", 0.55, 0.75), ("val", 0.1, 0.25), ("test", 0.12, 0.28)):
        rate, n = _positive_rate(records, split, name)
        assert abs(rate - overall) < 0.05, (name, rate, overall)
        assert low < n / len(records) < high, (name, n)


def test_ungrouped_split_has_exact_fractions_and_proportions():
    labels = np.array([0] * 700 + [1] * 300)
    names = split_indices(labels, val_fraction=0.1, test_fraction=0.2, seed=0)
    counts = Counter(zip(names, labels))
    assert counts == {("test", 0): 140, ("test", 1): 60, ("val", 0): 70, ("val", 1): 30, ("train", 0): 490, ("train", 1): 210}


def test_records_without_patient_ids_fall_back_to_case_level():
    records = _records(with_patients=False)
    split = make_split(records, val_fraction=0.2, seed=0)
    assert Counter(split.values())["val"] == math.ceil(0.2 * len(records))  # scikit-learn rounds up


def test_split_is_reproducible_and_seeded():
    records = _records()
    assert make_split(records, 0.1, 0.2, seed=1) == make_split(records, 0.1, 0.2, seed=1)
    assert make_split(records, 0.1, 0.2, seed=1) != make_split(records, 0.1, 0.2, seed=2)


def test_test_set_does_not_depend_on_val_fraction():
    records = _records()
    tests = [{c for c, s in make_split(records, v, 0.2, seed=0).items() if s == "test"} for v in (0.1, 0.2)]
    assert tests[0] == tests[1]


def test_unlabelled_records_are_split_without_stratification():
    records = _records()
    records[0].labels.clear()
    split = make_split(records, 0.2, seed=0)
    assert set(split.values()) == {"train", "val"}


def test_kfold_every_case_validated_once_and_grouped():
    records = _records()
    folds = kfold_splits(records, n_splits=4, seed=0)
    assert len(folds) == 4
    times_val = Counter(c for fold in folds for c, s in fold.items() if s == "val")
    assert set(times_val.values()) == {1} and len(times_val) == len(records)
    for fold in folds:
        by_patient = defaultdict(set)
        for record in records:
            by_patient[record.patient_id].add(fold[record.case_id])
        assert all(len(s) == 1 for s in by_patient.values())


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_saved_split_reloads_identically(tmp_path, suffix):
    records = _records()
    split = make_split(records, 0.1, 0.2, seed=0)
    path = save_split(split, tmp_path / "runs" / f"split{suffix}")
    assert load_split(path) == split
    applied = apply_split(records, load_split(path))
    assert [r.split for r in applied] == [split[r.case_id] for r in records]


def test_apply_split_rejects_missing_and_extra_cases(tmp_path):
    records = _records()
    split = make_split(records, 0.2, seed=0)
    partial = dict(list(split.items())[1:])
    with pytest.raises(DataError, match="1 dataset case"):
        apply_split(records, partial, source="split.csv")
    with pytest.raises(DataError, match="1 split case.*'ghost'"):
        apply_split(records, {**split, "ghost": "train"})


def test_duplicate_case_ids_and_bad_files_raise(tmp_path):
    records = _records()
    with pytest.raises(DataError, match="more than once"):
        make_split(records + records[:1])
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,fold\na,train\n")
    with pytest.raises(DataError, match="bad.csv.*case_id,split"):
        load_split(bad_csv)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[1, 2]")
    with pytest.raises(DataError, match="bad.json"):
        load_split(bad_json)
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "missing.csv")


def test_fractions_are_validated():
    with pytest.raises(ValueError, match="sum below 1"):
        make_split(_records(), val_fraction=0.5, test_fraction=0.5)


def test_real_dataset_split_and_view(data_root, tmp_path):
    from dualfuse.data.sources.folders import ImageFolderDataset

    dataset = ImageFolderDataset(data_root / "lung-ct-iqothnccd")
    split = make_split(dataset, val_fraction=0.15, test_fraction=0.15, seed=0)
    view = apply_split(dataset, load_split(save_split(split, tmp_path / "split.csv")))
    assert view.splits.keys() == {"train", "val", "test"}
    totals = dataset.class_counts()["label"]
    for name in ("val", "test"):
        counts = view.split(name).class_counts()["label"]
        for cls, n in counts.items():  # stratified: each class within 1.5 images of its share
            assert abs(n - totals[cls] * 0.15) <= 1.5, (name, cls, n)
