"""Zip mode: independent single-modality datasets paired at random (the DRIFA-Net protocol).

Zip mode pairs image m of one dataset with an unrelated image of another (e.g. a brain MRI with
a child's chest X-ray), so the images in one sample come from DIFFERENT patients and each task
head is supervised only by its own dataset's label. What it measures is shared multitask
learning across datasets, NOT fusion of one patient's information: a model cannot learn
cross-modal evidence from it. Use a `ManifestDataset` or `NiftiDataset` with several modalities
per case for real fusion.

Evaluating such a model on one random pairing would make a case's prediction depend on the partner
it happened to get. `PartnerDataset` is the evaluation view instead: every image of every dataset
once, as a case, next to K partner images of each other modality drawn from that modality's pool
(the training split) by (seed, case id, modality, partner index), never from the batch or from the
split being evaluated. A model then averages its prediction over the K partners.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dualfuse.data.base import CaseDataset

__all__ = ["PartnerDataset", "ZipDataset", "partner_index"]

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


def partner_index(seed: int, case_id: str, modality: str, partner: int, size: int) -> int:
    """Which image of a pool of `size` is partner `partner` of modality `modality` for case `case_id`:
    a hash of (seed, case id, modality, partner index), so partner k of a case is the same whatever
    else is predicted, and the first K of K' > K partners are the K partners."""
    digest = hashlib.sha256(f"partner:{seed}:{case_id}:{modality}:{partner}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % size


class PartnerDataset(Dataset):
    """Zip-mode cases for evaluation and prediction: every image of `cases[m]` once, each next to
    `partners` K images of every other modality, drawn from `pools` (each modality's training split).

    `cases` maps a modality to a single-modality dataset of the images to judge (one modality, as a
    user with one dataset has, or several); `pools` maps every other modality of the model to the
    dataset its partners come from; `modalities` lists the model's modalities (default: those of
    `cases` and `pools`). Case i's id is `"<modality>:<case id>"`, and its sample holds, for every
    modality, a `(K, C, H, W)` stack: the case's own image repeated K times for its own modality,
    partner k at position k for the others. Labels: the case's own task its label; the other tasks
    -1 (not this case's question) when the cases are labelled, absent when they are not.
    """

    def __init__(
        self,
        cases: Mapping[str, object],
        pools: Mapping[str, object],
        partners: int,
        seed: int = 0,
        tasks: Mapping[str, str] | None = None,
        modalities: Sequence[str] | None = None,
    ):
        if int(partners) < 1:
            raise ValueError(f"partners must be at least 1, got {partners}")
        self.partners = int(partners)
        self.seed = int(seed)
        self.cases = dict(cases)
        if not self.cases:
            raise ValueError("no cases to predict")
        self._modalities = tuple(modalities) if modalities is not None else tuple(dict.fromkeys([*pools, *cases]))
        unknown = [m for m in self.cases if m not in self._modalities]
        if unknown:
            raise ValueError(f"modality {unknown[0]!r} is not one of the model's {list(self._modalities)}")
        self.task_names = {m: (tasks or {}).get(m, f"{m}_label") for m in self._modalities}
        self.pools = {}
        for modality in self._modalities:
            if any(m != modality for m in self.cases):  # some case needs partners of this modality
                pool = pools.get(modality)
                if pool is None or len(pool) == 0:
                    raise ValueError(f"no partner images of modality {modality!r}: its training split is "
                                     f"{'missing' if pool is None else 'empty'}")
                self.pools[modality] = pool
        for name, dataset in [*self.cases.items(), *self.pools.items()]:
            if len(dataset.modalities) != 1:
                raise ValueError(f"dataset {name!r} must have one modality, has {list(dataset.modalities)}")
        self.labelled = all(len(d.tasks) for d in self.cases.values())
        self._offsets = np.cumsum([0, *(len(d) for d in self.cases.values())])

    @property
    def modalities(self) -> tuple[str, ...]:
        return self._modalities

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.task_names.values())

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """What `skip_bad` dropped from the cases (partners come from data that trained the model)."""
        return [item for dataset in self.cases.values() for item in getattr(dataset, "skipped", [])]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[str, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"case {index} out of range ({len(self)} cases)")
        position = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return list(self.cases)[position], index - int(self._offsets[position])

    def case_id(self, index: int) -> str:
        modality, row = self._locate(int(index))
        return f"{modality}:{self.cases[modality].records[row].case_id}"

    def partner_rows(self, index: int) -> dict[str, list[int]]:
        """`{other modality: [row of its pool for each partner k]}` of case `index`."""
        modality, _ = self._locate(int(index))
        case_id = self.case_id(index)
        return {other: [partner_index(self.seed, case_id, other, k, len(pool)) for k in range(self.partners)]
                for other, pool in self.pools.items() if other != modality}

    def partner_ids(self, index: int) -> dict[str, list[str]]:
        """`{other modality: [case id of each partner k in its pool]}` of case `index`."""
        return {other: [self.pools[other].records[row].case_id for row in rows]
                for other, rows in self.partner_rows(index).items()}

    def __getitem__(self, index: int) -> dict:
        modality, row = self._locate(int(index))
        dataset = self.cases[modality]
        item = dataset[row]
        image = item[dataset.modalities[0]]
        sample: dict = {modality: image.unsqueeze(0).expand(self.partners, *image.shape)}
        for other, rows in self.partner_rows(index).items():
            pool = self.pools[other]
            sample[other] = torch.stack([pool[r][pool.modalities[0]] for r in rows])
        if self.labelled:
            own = item[dataset.tasks[0]] if dataset.tasks and dataset.tasks[0] in item else torch.tensor(-1)
            for name, task in self.task_names.items():
                sample[task] = own if name == modality else torch.tensor(-1, dtype=torch.long)
        sample["case_id"] = f"{modality}:{item['case_id']}"
        sample["patient_id"] = item["patient_id"]
        return sample

    def labels(self, task: str) -> np.ndarray:
        """Labels of `task` per case (from records): -1 on the other modalities' cases."""
        names = [m for m, t in self.task_names.items() if t == task]
        if not names:
            raise KeyError(f"unknown task {task!r}; tasks are {list(self.tasks)}")
        return np.concatenate([d.labels() if m == names[0] else np.full(len(d), -1, dtype=np.int64)
                               for m, d in self.cases.items()])

    def __repr__(self) -> str:
        parts = ", ".join(f"{m}={len(d)}" for m, d in self.cases.items())
        pools = ", ".join(f"{m}={len(d)}" for m, d in self.pools.items())
        return f"PartnerDataset(cases: {parts}; partner pools: {pools}; partners={self.partners}, seed={self.seed})"
