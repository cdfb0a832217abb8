"""The calibration split (`data.cal_fraction`): carved from train only, stratified, grouped by patient,
seeded, saved and reloaded; where there is no room, calibration falls back to val and says why."""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualfuse.config import DataConfig, SourceConfig
from dualfuse.data.base import CaseRecord, DataError, ImageRef
from dualfuse.data.datamodule import ClassificationDataModule
from dualfuse.data.multimodal import ZipDataset
from dualfuse.data.sources import MedMNISTDataset
from dualfuse.data.splits import carve_calibration, load_split, save_split

FALLBACK = "temperature, referral and conformal thresholds were fitted on val, which also chose the checkpoint"


# --- sources ------------------------------------------------------------------------------------------
def breast(data_root: Path) -> SourceConfig:
    return SourceConfig(format="medmnist", path=str(data_root / "medmnist" / "breastmnist.npz"))


def patient_manifest(root: Path, patients: int = 90, seed: int = 0, rare: int = 0) -> SourceConfig:
    """A manifest of tiny PNGs: patients with 1-4 images each, ~35% 'sick' (labels constant per
    patient), plus `rare` patients of class 'rare' with two images each."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients + rare):
        label = "rare" if p >= patients else ("sick" if rng.random() < 0.35 else "well")
        for k in range(2 if label == "rare" else int(rng.integers(1, 5))):
            name = f"img/p{p:03d}_{k}.png"
            rows.append({"case_id": f"p{p:03d}_{k}", "image": name, "label": label, "patient_id": f"p{p:03d}"})
    (root / "img").mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    for row in rows:
        Image.fromarray(pixels).save(root / row["image"])
    with (root / "m.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    classes = ["sick", "well", "rare"] if rare else ["sick", "well"]
    return SourceConfig(format="manifest", path=str(root / "m.csv"), classes=classes)


def module(sources: dict[str, SourceConfig], split_path: Path | None = None, seed: int = 0, **data) -> ClassificationDataModule:
    config = DataConfig(mode="zip" if len(sources) > 1 else "single", sources=sources, num_workers=0, img_size=16,
                        **data)
    datamodule = ClassificationDataModule(config, in_chans=1, seed=seed, split_path=split_path)
    datamodule.setup()
    return datamodule


def ids(dataset) -> set[str]:
    return {r.case_id for r in dataset.records}


def patients(dataset) -> set[str]:
    return {r.patient_id for r in dataset.records}


def class_share(dataset, cls: str) -> float:
    counts = dataset.class_counts()["label"]
    return counts[cls] / sum(counts.values())


# --- a source with official val/test (MedMNIST) ----------------------------------------------------------
@pytest.fixture(scope="module")
def breast_module(data_root, module_tmp):
    split_path = module_tmp("breast") / "split.csv"
    return module({"b": breast(data_root)}, split_path), split_path


def test_medmnist_keeps_official_val_test_and_carves_cal_from_train(breast_module, data_root):
    data, _ = breast_module
    official = {s: ids(MedMNISTDataset(data_root / "medmnist" / "breastmnist.npz", split=s)) for s in ("train", "val", "test")}
    assert data.calibration_split == "cal" and data.calibration_note is None
    assert ids(data.datasets["val"]) == official["val"] and ids(data.datasets["test"]) == official["test"]
    cal, train = ids(data.datasets["cal"]), ids(data.datasets["train"])
    assert cal <= official["train"] and train | cal == official["train"] and not train & cal
    total = sum(len(v) for v in official.values())
    assert abs(len(cal) - 0.1 * total) <= 2, len(cal)  # cal_fraction is of the whole source
    pool = official["train"]
    pool_share = np.mean([r.labels["label"] == 0 for r in data.sources["b"].records if r.case_id in pool])
    assert abs(class_share(data.datasets["cal"], "0") - pool_share) < 0.02  # stratified


def test_cal_is_saved_reloaded_and_served_like_val(breast_module, data_root):
    data, split_path = breast_module
    saved = load_split(split_path)
    assert Counter(saved.values()) == {s: len(d) for s, d in data.datasets.items()}
    again = module({"b": breast(data_root)}, split_path, seed=5)  # read back, not recarved with the new seed
    assert again.calibration_split == "cal"
    assert {s: ids(d) for s, d in again.datasets.items()} == {s: ids(d) for s, d in data.datasets.items()}
    batch = next(iter(data.eval_dataloader("cal")))
    assert batch["image"].shape[1:] == (1, 16, 16) and len(batch["case_id"]) == data.config.batch_size
    assert {c for b in data.eval_dataloader("cal") for c in b["case_id"]} == ids(data.datasets["cal"])
    trained = {c for b in data.train_dataloader() for c in b["case_id"]}
    assert trained <= ids(data.datasets["train"]) and not trained & ids(data.datasets["cal"])


def test_carving_is_deterministic_for_a_seed(data_root):
    first, again, other = (ids(module({"b": breast(data_root)}, seed=s).datasets["cal"]) for s in (1, 1, 2))
    assert first == again and first != other


def test_max_eval_cases_applies_to_cal(data_root):
    data = module({"b": breast(data_root)}, max_eval_cases=30, max_train_cases=100)
    assert {s: len(d) for s, d in data.datasets.items()} == {"train": 100, "val": 30, "cal": 30, "test": 30}


# --- a carved source with patient ids ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest_source(module_tmp):
    return patient_manifest(module_tmp("manifest"), patients=150)


def test_carved_source_cal_is_disjoint_by_case_and_patient_and_stratified(manifest_source):
    data = module({"m": manifest_source}, val_fraction=0.15, test_fraction=0.2, cal_fraction=0.15)
    assert data.calibration_split == "cal" and data.calibration_note is None
    parts = {s: data.datasets[s] for s in ("train", "val", "cal", "test")}
    everything = data.sources["m"]
    assert sum(len(p) for p in parts.values()) == len(everything)
    for a in parts:
        for b in parts:
            if a < b:
                assert not ids(parts[a]) & ids(parts[b]) and not patients(parts[a]) & patients(parts[b]), (a, b)
    share = class_share(everything, "sick")
    assert abs(class_share(parts["cal"], "sick") - share) < 0.08
    assert 0.09 < len(parts["cal"]) / len(everything) < 0.21


def test_adding_cal_moves_cases_out_of_train_only(manifest_source):
    with_cal, without = module({"m": manifest_source}), module({"m": manifest_source}, cal_fraction=0)
    for split in ("val", "test"):
        assert ids(with_cal.datasets[split]) == ids(without.datasets[split])
    assert ids(with_cal.datasets["cal"]) <= ids(without.datasets["train"])
    assert ids(with_cal.datasets["train"]) | ids(with_cal.datasets["cal"]) == ids(without.datasets["train"])


# --- no room: calibration falls back to val, and says why ----------------------------------------------------
def test_cal_fraction_zero_falls_back_to_val(manifest_source, tmp_path):
    data = module({"m": manifest_source}, tmp_path / "split.csv", cal_fraction=0)
    assert data.calibration_split == "val" and "cal" not in data.datasets
    assert data.calibration_note == f"no calibration split (data.cal_fraction is 0): {FALLBACK}"
    with pytest.raises(ValueError, match="unknown split 'cal'"):
        data.eval_dataloader("cal")
    assert "cal" not in set(load_split(tmp_path / "split.csv").values())
    again = module({"m": manifest_source}, tmp_path / "split.csv", cal_fraction=0)  # same note when read back
    assert again.calibration_note == data.calibration_note


def test_small_source_falls_back_to_val(tmp_path):
    data = module({"m": patient_manifest(tmp_path, patients=30)})
    assert data.calibration_split == "val" and "cal" not in data.datasets
    note = data.calibration_note
    pool = len(data.datasets["train"])
    assert note == f"no calibration split (too few cases: the training pool has {pool} cases, under 100): {FALLBACK}"


def test_rare_class_falls_back_to_val_naming_the_class(tmp_path):
    data = module({"m": patient_manifest(tmp_path, patients=120, rare=4)}, val_fraction=0, test_fraction=0.2)
    assert data.calibration_split == "val"
    assert data.calibration_note.startswith("no calibration split (too few cases: class 'rare' would have ")
    assert "patient" in data.calibration_note


def test_old_split_file_without_cal_loads_and_says_so(manifest_source, tmp_path):
    split_path = tmp_path / "split.csv"
    new = module({"m": manifest_source}, split_path)
    old = {case: "train" if split == "cal" else split for case, split in load_split(split_path).items()}
    save_split(old, split_path)  # as written before data.cal_fraction existed
    data = module({"m": manifest_source}, split_path)
    assert data.calibration_split == "val" and "cal" not in data.datasets
    assert data.calibration_note == (f"no calibration split (the saved split.csv predates data.cal_fraction and has no cal "
                                     f"cases): {FALLBACK}")
    assert ids(data.datasets["train"]) == ids(new.datasets["train"]) | ids(new.datasets["cal"])
    assert load_split(split_path) == old  # read, never rewritten


def test_unknown_split_name_in_a_split_file_is_refused(manifest_source, tmp_path):
    split_path = tmp_path / "split.csv"
    module({"m": manifest_source}, split_path)
    save_split({case: "calibration" if split == "cal" else split for case, split in load_split(split_path).items()},
               split_path)
    with pytest.raises(DataError, match=r"split\.csv: unknown split name\(s\) \['calibration'\]; expected train, val, cal, test"):
        module({"m": manifest_source}, split_path)


# --- zip mode: each source its own cal part ----------------------------------------------------------------
def test_zip_mode_carves_cal_per_source(data_root, manifest_source, tmp_path):
    split_path = tmp_path / "split.csv"
    data = module({"b": breast(data_root), "m": manifest_source}, split_path)
    assert data.calibration_split == "cal" and data.calibration_note is None
    cal = data.datasets["cal"]
    assert isinstance(cal, ZipDataset) and cal.length == "max"
    for name in ("b", "m"):
        saved = load_split(tmp_path / f"split-{name}.csv")
        own_cal = {c for c, s in saved.items() if s == "cal"}
        assert own_cal and own_cal == ids(cal.datasets[name])
        assert not own_cal & ids(data.datasets["train"].datasets[name])
    assert len(cal) == max(len(d) for d in cal.datasets.values())


def test_zip_mode_falls_back_when_one_source_has_no_room(data_root, tmp_path):
    split_path = tmp_path / "split.csv"
    data = module({"b": breast(data_root), "small": patient_manifest(tmp_path / "small", patients=30)}, split_path)
    assert data.calibration_split == "val" and "cal" not in data.datasets
    assert data.calibration_note.startswith("no calibration split (data.sources.small: too few cases: the training pool")
    assert "cal" not in set(load_split(tmp_path / "split-b.csv").values())  # b's cases stay in train


# --- carve_calibration on records ----------------------------------------------------------------------------
def _records(patients: int = 200, seed: int = 0) -> list[CaseRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for p in range(patients):
        label = int(rng.random() < 0.3)
        for k in range(int(rng.integers(1, 5))):
            records.append(CaseRecord(f"p{p}_{k}", {"image": ImageRef(f"p{p}_{k}.png")}, {"label": label}, f"p{p}"))
    return records


def test_carve_calibration_groups_stratifies_and_repeats():
    records = _records()
    split, reason = carve_calibration(records, 0.15, seed=4)
    assert reason is None and split == carve_calibration(records, 0.15, seed=4)[0]
    assert split != carve_calibration(records, 0.15, seed=5)[0]
    by_patient = defaultdict(set)
    for record in records:
        by_patient[record.patient_id].add(split[record.case_id])
    assert all(len(s) == 1 for s in by_patient.values())
    rate = {name: np.mean([r.labels["label"] for r in records if split[r.case_id] == name]) for name in ("train", "cal")}
    assert abs(rate["cal"] - rate["train"]) < 0.06, rate


def test_carve_calibration_no_room():
    records = _records()
    assert carve_calibration(records[:99], 0.2) == ({r.case_id: "train" for r in records[:99]},
                                                    "too few cases: the training pool has 99 cases, under 100")
    lonely = CaseRecord("x0", {"image": ImageRef("x0.png")}, {"label": 2}, "px")
    split, reason = carve_calibration([*records, lonely], 0.15)
    assert set(split.values()) == {"train"}
    assert reason in ("too few cases: class '2' would have 0 patients in cal",
                      "too few cases: class '2' would have 1 patient in cal",
                      "too few cases: class '2' would have 0 patients in train"), reason
