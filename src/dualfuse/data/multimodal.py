"""Zip mode: independent single-modality datasets paired at random (the DRIFA-Net protocol).

Zip mode pairs image m of one dataset with an unrelated image of another (e.g. a brain MRI with
a child's chest X-ray), so the images in one sample come from DIFFERENT patients and each task
head is supervised only by its own dataset's label. What it measures is shared multitask
learning across datasets, NOT fusion of one patient's information: a model cannot learn
cross-modal evidence from it. Use a `ManifestDataset` or `NiftiDataset` with several modalities
per case for real fusion.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch.utils.data import Dataset

from dualfuse.data.base import CaseDataset

__all__ = ["ZipDataset"]

_LENGTHS = ("min", "max")


class ZipDataset(Dataset):
    """M single-modality, single-task datasets zipped into one multitask sample per index.

    `datasets` maps a name to a dataset; that name is the sample key of its image, and
    `tasks[name]` (default `"<name>_label"`, distinct from the image key) the key of its label.
    Pairing is a fresh random permutation per epoch from `(seed, epoch)`, so `set_epoch(e)`
    re-pairs reproducibly (call it in the main process before iterating; persistent workers
    keep the old pairing). `length="min"` subsamples every dataset to the shortest one each
    epoch; `"max"` shows every image of the shorter datasets once and fills up by drawing
    with replacement.
    """

    def __init__(
        self,
        datasets: Mapping[str, CaseDataset],
        tasks: Mapping[str, str] | None = None,
        length: str = "min",
        seed: int = 0,
    ):
        if len(datasets) < 2:
            raise ValueError("zip mode needs at least two datasets")
        if length not in _LENGTHS:
            raise ValueError(f"length must be one of {_LENGTHS}, got {length!r}")
        for name, dataset in datasets.items():
            if len(dataset.modalities) != 1 or len(dataset.classes) != 1:
                raise ValueError(
                    f"dataset {name!r} must have one modality and one task, has {dataset.modalities} and {list(dataset.classes)}"
                )
            if len(dataset) == 0:
                raise ValueError(f"dataset {name!r} is empty")
        self.datasets = dict(datasets)
        self.task_names = {name: (tasks or {}).get(name, f"{name}_label") for name in self.datasets}
        keys = list(self.datasets) + list(self.task_names.values())
        if len(set(keys)) != len(keys) or {"case_id", "patient_id"} & set(keys):
            raise ValueError(f"modality and task names must be distinct sample keys, got {keys}")
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.indices = self._pairing(0)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.datasets)

    @property
    def classes(self) -> dict[str, list[str]]:
        return {self.task_names[n]: next(iter(d.classes.values())) for n, d in self.datasets.items()}

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.task_names.values())

    def set_epoch(self, epoch: int) -> None:
        """Re-pair for `epoch`; the same (seed, epoch) always gives the same pairs."""
        self.epoch = int(epoch)
        self.indices = self._pairing(self.epoch)

    def _pairing(self, epoch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        sizes = {name: len(d) for name, d in self.datasets.items()}
        total = min(sizes.values()) if self.length == "min" else max(sizes.values())
        indices = {}
        for name, size in sizes.items():
            order = rng.permutation(size)
            if size < total:
                order = np.concatenate([order, rng.integers(0, size, total - size)])
            indices[name] = order[:total]
        return indices

    def __len__(self) -> int:
        return len(next(iter(self.indices.values())))

    def __getitem__(self, index: int) -> dict:
        sample: dict = {}
        case_ids = []
        for name, dataset in self.datasets.items():
            item = dataset[int(self.indices[name][index])]
            sample[name] = item[dataset.modalities[0]]
            sample[self.task_names[name]] = item[dataset.tasks[0]]
            case_ids.append(f"{name}:{item['case_id']}")
        sample["case_id"] = sample["patient_id"] = "|".join(case_ids)
        return sample

    def labels(self, task: str) -> np.ndarray:
        """Labels of `task` in the current epoch's order (from records, without decoding images)."""
        names = [n for n, t in self.task_names.items() if t == task]
        if not names:
            raise KeyError(f"unknown task {task!r}; tasks are {list(self.tasks)}")
        name = names[0]
        return self.datasets[name].labels()[self.indices[name]]

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={len(d)}" for n, d in self.datasets.items())
        return f"ZipDataset({parts}, length={self.length!r}, pairs={len(self)}, epoch={self.epoch})"
