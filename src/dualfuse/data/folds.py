"""Cross-validation splits: K stratified, patient-grouped folds, with test and calibration cases outside them.

On a few hundred images one split leaves a test set whose CI is as wide as the differences that
matter; K folds score every case once, out of fold. Two sets stay outside the folds:

* test: the source's own test split, else `test_fraction` carved first (grouped by patient), or none;
* cal: `data.cal_fraction` carved from what is left, so the K fold models can be calibrated as one
  ensemble on cases none of them trained on (each fold model saw every other non-test case).

Every fold's split is an ordinary `{case_id: split}` map (train / val / cal / test), so each fold
trains as an ordinary run with that split.csv; repeats R draw new folds with seeds `seed + r`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dualfuse.config import DataConfig
from dualfuse.data.base import CaseDataset
from dualfuse.data.datamodule import add_calibration
from dualfuse.data.splits import kfold_splits, make_split

__all__ = ["FoldPlan", "plan_folds"]


@dataclass
class FoldPlan:
    """The case -> split maps of every fold (repeat r, fold k is fold `r * K + k`) and the shared parts."""

    folds: list[dict[str, str]]
    n_folds: int
    repeats: int
    test: list[str] = field(default_factory=list)
    cal: list[str] = field(default_factory=list)
    calibration_note: str | None = None

    def pooled_split(self) -> dict[str, str]:
        """The split of the cv folder itself (its K models as one ensemble): every fold case is train."""
        return {case: split if split in ("test", "cal") else "train" for case, split in self.folds[0].items()}


def plan_folds(dataset: CaseDataset, config: DataConfig, n_folds: int, repeats: int = 1, test_fraction: float = 0.0,
               seed: int = 0) -> FoldPlan:
    """Plan `repeats` x `n_folds` folds of `dataset` (see the module docstring); `config.cal_fraction`
    sizes the calibration cases."""
    if n_folds < 2:
        raise ValueError(f"--folds must be at least 2, got {n_folds}")
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    own = {r.case_id: r.split for r in dataset.records}
    if "test" in own.values():
        if test_fraction:
            raise ValueError(f"--test-fraction {test_fraction}: the source has its own test split; omit it")
        assigned = {case: "test" if split == "test" else "train" for case, split in own.items()}
    elif test_fraction:
        assigned = make_split(dataset, val_fraction=0.0, test_fraction=test_fraction, seed=seed)
    else:
        assigned = dict.fromkeys(own, "train")
    assigned, note = add_calibration(dataset, assigned, config, seed)
    pool = dataset.with_records([r for r in dataset.records if assigned[r.case_id] == "train"])
    if len(pool) < n_folds:
        raise ValueError(f"{len(pool)} cases left for {n_folds} folds; use fewer folds")
    folds = []
    for repeat in range(repeats):
        for fold in kfold_splits(pool, n_splits=n_folds, seed=seed + repeat):
            folds.append({**assigned, **fold})
    return FoldPlan(folds, n_folds, repeats, test=[c for c, s in assigned.items() if s == "test"],
                    cal=[c for c, s in assigned.items() if s == "cal"], calibration_note=note)
