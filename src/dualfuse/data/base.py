"""Core data types shared by every image source.

A *case* is one patient-level sample: one image per modality plus one label per task. Every
source (MedMNIST npz, image folders, CSV manifests, DICOM, NIfTI) builds `CaseRecord`s and
implements `CaseDataset.read_image`; everything else (sample layout, transforms, splits, label
statistics, bad-input bookkeeping) lives here so that all sources behave the same.
"""
from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "DEFAULT_MODALITY",
    "DEFAULT_TASK",
    "RARE_COUNT",
    "RARE_FRACTION",
    "CaseDataset",
    "CaseRecord",
    "DataError",
    "ImageRef",
    "Transform",
    "rare_classes",
    "skip_or_raise",
    "to_chw",
    "validate_pixels",
]

DEFAULT_MODALITY = "image"
DEFAULT_TASK = "label"

# ITU-R BT.601 luma weights: the same grey conversion PIL uses for "RGB" -> "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class DataError(ValueError):
    """The one error type for bad input data.

    The message is a single line `"<where>: <problem>"`, where `where` names the file (or the
    manifest row and field), so a user can find and fix the offending input directly.
    """

    def __init__(self, where: object, problem: object | None = None):
        text = str(where) if problem is None else f"{where}: {problem}"
        super().__init__(" ".join(text.split()))


@dataclass(frozen=True)
class ImageRef:
    """Where one 2D image lives: a file, optionally an array `key` (npz), an `index` (frame,
    slice or array row) and the `axis` that index runs along (volume slices)."""

    path: str
    key: str | None = None
    index: int | None = None
    axis: int | None = None

    def __str__(self) -> str:
        parts = [self.path]
        if self.key is not None:
            parts.append(f"[{self.key}]")
        if self.index is not None:
            parts.append(f"[{self.index}]" if self.axis is None else f"[axis {self.axis}, {self.index}]")
        return "".join(parts)


@dataclass
class CaseRecord:
    """One case: `images` maps modality name to image, `labels` maps task name to class index
    (empty for unlabelled prediction input)."""

    case_id: str
    images: dict[str, ImageRef]
    labels: dict[str, int] = field(default_factory=dict)
    patient_id: str | None = None
    split: str | None = None


Transform = Union[Callable[[torch.Tensor, str], torch.Tensor], Mapping[str, Callable[[torch.Tensor], torch.Tensor]]]


def validate_pixels(image: torch.Tensor | np.ndarray, where: object, allow_constant: bool = False) -> None:
    """Reject images no model should see: empty, NaN/inf, or constant (a blank or failed export).

    Returns nothing: it only raises `DataError` (unlike `models.inputs.check_image`, which returns a tensor).
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.size == 0 or 0 in array.shape:
        raise DataError(where, f"zero-size image {tuple(array.shape)}")
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise DataError(where, f"image contains {int((~np.isfinite(array)).sum())} NaN/inf values")
    if not allow_constant and array.min() == array.max():
        raise DataError(where, f"constant image (every pixel is {array.flat[0]!r})")


#: A class is "rare" (usually a stray or mistyped label) below this share of a task's cases ...
RARE_FRACTION = 0.01
#: ... and with fewer cases than this.
RARE_COUNT = 3


def rare_classes(counts: Mapping[str, Mapping[str, int]]) -> list[tuple[str, str, int, int]]:
    """`(task, class, count, total)` for each class under `RARE_FRACTION` of its task's labelled
    cases and under `RARE_COUNT` cases: a stray `7` among 0/1 labels (and the empty classes 2..6 it
    creates) must not become a class silently. `counts` is `{task: {class: cases}}`."""
    found = []
    for task, classes in counts.items():
        total = sum(classes.values())
        for name, count in classes.items():
            if count < RARE_COUNT and count < RARE_FRACTION * total:
                found.append((task, str(name), int(count), int(total)))
    return found


def to_chw(array: np.ndarray, channels: int | None = None, where: object = "image") -> torch.Tensor:
    """(H,W) or (H,W,C) array -> float32 (C,H,W) tensor with `channels` channels (None: native).

    3 -> 1 uses BT.601 luma (what PIL does), 1 -> 3 repeats the grey plane.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise DataError(where, f"expected a 2D image, got array of shape {tuple(array.shape)}")
    array = array.astype(np.float32, copy=False)
    native = array.shape[-1]
    if channels is None or channels == native:
        out = array
    elif channels == 1 and native == 3:
        out = (array @ _LUMA)[..., None]
    elif channels == 3 and native == 1:
        out = np.repeat(array, 3, axis=-1)
    else:
        raise DataError(where, f"cannot convert {native} channels to {channels}")
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def skip_or_raise(error: DataError, where: object, skip_bad: bool, skipped: list[tuple[str, str]]) -> None:
    """The one skip policy: with `skip_bad` list `(where, message)` in `skipped`, else raise."""
    if not skip_bad:
        raise error
    skipped.append((str(where), str(error)))


class CaseDataset(Dataset, abc.ABC):
    """Map-style dataset of `CaseRecord`s; subclasses only say how to decode one `ImageRef`.

    A sample is a flat dict `{modality: float32 (C,H,W), task: long scalar, "case_id": str,
    "patient_id": str}`; tasks missing from a record (unlabelled input) are left out of it.
    `patient_id` falls back to `case_id` so grouped splits always have a key.

    `transform` is either one callable `transform(image, modality)` or a dict
    `{modality: callable(image)}` (modalities not in the dict pass through unchanged).

    With `skip_bad=True` bad records are dropped at construction where that is cheap (see
    `probe`) and every drop is listed in `skipped` as `(path, reason)`; `verify()` decodes every
    image for the expensive cases. With `skip_bad=False` the first bad file raises `DataError`.
    """

    #: Whether a constant image is acceptable (e.g. blank background slices of a volume).
    allow_constant: bool = False
    #: A sample's `patient_id` is its `case_id` when the record has none (grouped splits need a key).
    #: Prediction inputs turn this off: there an unknown patient id stays "" and never shows a path.
    patient_id_fallback: bool = True

    def __init__(
        self,
        records: Sequence[CaseRecord],
        modalities: Sequence[str] = (DEFAULT_MODALITY,),
        classes: Mapping[str, Sequence[str]] | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
        skipped: Iterable[tuple[str, str]] = (),
    ):
        self.modalities = tuple(modalities)
        self.classes = {task: [str(c) for c in names] for task, names in (classes or {}).items()}
        keys = [*self.modalities, *self.classes, "case_id", "patient_id"]
        if len(set(keys)) != len(keys):
            raise ValueError(f"modality, task and id names must be distinct sample keys, got {keys}")
        self.transform = transform
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = list(skipped)
        self.records: list[CaseRecord] = []
        for record in records:
            try:
                self.check_record(record)
                for modality in self.modalities:
                    self.probe(record.images[modality])
            except DataError as error:
                skip_or_raise(error, _error_path(record, error), skip_bad, self.skipped)
                continue
            self.records.append(record)

    # --- what a source implements -------------------------------------------------------------
    @abc.abstractmethod
    def read_image(self, ref: ImageRef) -> torch.Tensor:
        """Decode `ref` into a float32 (C,H,W) tensor; raise `DataError` on any problem."""

    def probe(self, ref: ImageRef) -> None:
        """Cheap construction-time check of one image (default: the file exists and is non-empty)."""
        path = Path(ref.path)
        if path.is_symlink() and not path.exists():
            raise DataError(ref.path, "broken symlink")
        if not path.is_file():
            raise DataError(ref.path, "file not found")
        if path.stat().st_size == 0:
            raise DataError(ref.path, "zero-size file")

    def check_record(self, record: CaseRecord) -> None:
        """Every modality present and every label a valid class index."""
        for modality in self.modalities:
            if modality not in record.images:
                raise DataError(f"case {record.case_id}", f"missing modality {modality!r}")
        for task, label in record.labels.items():
            names = self.classes.get(task)
            if names is None:
                raise DataError(f"case {record.case_id}", f"unknown task {task!r}")
            if not 0 <= int(label) < len(names):
                raise DataError(f"case {record.case_id}", f"label {label} out of range for task {task!r} ({len(names)} classes)")

    # --- sample access ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def load(self, ref: ImageRef) -> torch.Tensor:
        """`read_image` plus the generic checks every decoded image must pass."""
        image = self.read_image(ref)
        validate_pixels(image, ref, allow_constant=self.allow_constant)
        return image

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        sample: dict = {}
        for modality in self.modalities:
            sample[modality] = self.apply_transform(self.load(record.images[modality]), modality)
        for task, label in record.labels.items():
            sample[task] = torch.tensor(int(label), dtype=torch.long)
        sample["case_id"] = record.case_id
        sample["patient_id"] = record.patient_id or (record.case_id if self.patient_id_fallback else "")
        return sample

    def apply_transform(self, image: torch.Tensor, modality: str) -> torch.Tensor:
        if self.transform is None:
            return image
        if isinstance(self.transform, Mapping):
            fn = self.transform.get(modality)
            return image if fn is None else fn(image)
        return self.transform(image, modality)

    def verify(self) -> CaseDataset:
        """Decode every image once. Bad records are dropped into `skipped` (skip_bad) or raise."""
        kept = []
        for record in self.records:
            try:
                for modality in self.modalities:
                    self.load(record.images[modality])
            except DataError as error:
                skip_or_raise(error, _error_path(record, error), self.skip_bad, self.skipped)
                continue
            kept.append(record)
        self.records = kept
        return self

    # --- views and statistics -----------------------------------------------------------------
    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.classes)

    @property
    def num_classes(self) -> dict[str, int]:
        return {task: len(names) for task, names in self.classes.items()}

    def with_records(self, records: Sequence[CaseRecord]) -> CaseDataset:
        """A shallow copy of this dataset (same reader settings) holding `records`."""
        view = copy.copy(self)
        view.records = list(records)
        view.skipped = list(self.skipped)
        return view

    def split(self, name: str) -> CaseDataset:
        return self.with_records([r for r in self.records if r.split == name])

    def subset(self, indices: Iterable[int]) -> CaseDataset:
        return self.with_records([self.records[int(i)] for i in indices])

    @property
    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records:
            counts[str(record.split)] = counts.get(str(record.split), 0) + 1
        return counts

    def _task(self, task: str | None) -> str:
        if task is not None:
            if task not in self.classes:
                raise KeyError(f"unknown task {task!r}; tasks are {list(self.classes)}")
            return task
        if len(self.classes) != 1:
            raise ValueError(f"dataset has tasks {list(self.classes)}; name one")
        return next(iter(self.classes))

    def labels(self, task: str | None = None) -> np.ndarray:
        """Class indices of `task` (default: the only task); -1 for unlabelled records."""
        task = self._task(task)
        return np.array([r.labels.get(task, -1) for r in self.records], dtype=np.int64)

    def class_counts(self) -> dict[str, dict[str, int]]:
        """`{task: {class_name: count}}` over labelled records."""
        out = {}
        for task, names in self.classes.items():
            labels = self.labels(task)
            counts = np.bincount(labels[labels >= 0], minlength=len(names))
            out[task] = {name: int(n) for name, n in zip(names, counts)}
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cases={len(self)}, modalities={list(self.modalities)}, "
            f"classes={self.classes}, skipped={len(self.skipped)})"
        )


def _error_path(record: CaseRecord, error: DataError) -> str:
    """The file an error is about (its message starts with it), else the case id."""
    text = str(error)
    for ref in record.images.values():
        if text.startswith(str(ref)) or text.startswith(ref.path):
            return ref.path
    return record.case_id
