"""MedMNIST `.npz` files: `{train,val,test}_{images,labels}` arrays, loaded from a path or by name."""
from __future__ import annotations

import importlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dualfuse.data.base import (
    DEFAULT_MODALITY,
    DEFAULT_TASK,
    CaseDataset,
    CaseRecord,
    DataError,
    ImageRef,
    Transform,
    to_chw,
    validate_pixels,
)

__all__ = ["MEDMNIST_SPLITS", "MedMNISTDataset", "medmnist_class_names", "download_medmnist"]

MEDMNIST_SPLITS = ("train", "val", "test")
_INSTALL_HINT = "pip install dualfuse[medmnist]"


def _medmnist():
    """The optional `medmnist` package, or None when it is not installed."""
    try:
        return importlib.import_module("medmnist")
    except ImportError:
        return None


def medmnist_class_names(flag: str, num_classes: int) -> list[str]:
    """Class names from `medmnist.INFO[flag]["label"]` when the package knows `flag`, else "0","1",...

    `num_classes` (the labels seen) is only the fallback: a split may lack the last class.
    """
    module = _medmnist()
    info = getattr(module, "INFO", {}).get(flag) if module is not None else None
    if info is not None and info.get("label"):
        return [info["label"][str(i)] for i in range(len(info["label"]))]
    return [str(i) for i in range(num_classes)]


def download_medmnist(name: str, root: str | Path | None = None, size: int = 28) -> Path:
    """Fetch the official `<name>[_<size>].npz` with the `medmnist` package (it checks the MD5)."""
    module = _medmnist()
    if module is None:
        raise ImportError(f"loading MedMNIST by name ({name!r}) needs the medmnist package: {_INSTALL_HINT}")
    flag = name.lower()
    if flag not in module.INFO:
        raise DataError(name, f"unknown MedMNIST dataset; known: {sorted(module.INFO)}")
    root = Path(root or os.environ.get("MEDMNIST_ROOT", Path.home() / ".medmnist"))
    root.mkdir(parents=True, exist_ok=True)
    data_class = getattr(module, module.INFO[flag]["python_class"])
    data_class(split="test", root=str(root), download=True, size=size)
    return root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


class MedMNISTDataset(CaseDataset):
    """A MedMNIST npz as a single-modality, single-task dataset held in memory.

    `source` is a path to an `.npz` (always works, never MD5-checked: local copies may differ
    from the official release) or a dataset name such as "pneumoniamnist", which downloads via
    the optional `medmnist` package. `split=None` loads all three splits with `record.split` set.
    Images are uint8 grey (N,H,W) or RGB (N,H,W,3) scaled to [0,1]; labels (N,) or (N,1).
    """

    def __init__(
        self,
        source: str | Path,
        split: str | None = None,
        channels: int | None = None,
        classes: Sequence[str] | None = None,
        size: int = 28,
        root: str | Path | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
        modality: str = DEFAULT_MODALITY,
        task: str = DEFAULT_TASK,
    ):
        path = Path(source)
        if path.suffix.lower() != ".npz" and not path.exists():
            path = download_medmnist(str(source), root, size)
        self.path = path
        self.channels = channels
        splits = MEDMNIST_SPLITS if split is None else (split,)
        if split is not None and split not in MEDMNIST_SPLITS:
            raise ValueError(f"split must be one of {MEDMNIST_SPLITS} or None, got {split!r}")
        self.arrays, labels = _load_npz(path, splits)

        num_classes = max((int(y.max()) + 1 for y in labels.values() if y.size), default=0)
        names = list(classes) if classes is not None else medmnist_class_names(path.stem.split("_")[0], num_classes)
        records = [
            CaseRecord(
                case_id=f"{name}_{i}",
                images={modality: ImageRef(str(path), key=f"{name}_images", index=i)},
                labels={task: int(y)},
                split=name,
            )
            for name in splits
            for i, y in enumerate(labels[name])
        ]
        super().__init__(records, (modality,), {task: names}, transform, skip_bad)

    def probe(self, ref: ImageRef) -> None:
        """Arrays are in memory, so the full generic check is cheap here."""
        validate_pixels(self.arrays[ref.key][ref.index], ref)

    def read_image(self, ref: ImageRef) -> torch.Tensor:
        array = self.arrays[ref.key][ref.index]
        if array.dtype.kind in "ui":
            array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
        return to_chw(array, self.channels, ref)


def _load_npz(path: Path, splits: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Validated `{"<split>_images": array}` and `{split: labels (N,)}` for the requested splits."""
    where = str(path)
    if not path.is_file():
        raise DataError(where, "npz file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [f"{s}_{kind}" for s in splits for kind in ("images", "labels") if f"{s}_{kind}" not in npz.files]
            if missing:
                raise DataError(where, f"missing npz keys {missing} (has {sorted(npz.files)})")
            images = {f"{s}_images": npz[f"{s}_images"] for s in splits}
            labels = {s: npz[f"{s}_labels"] for s in splits}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(where, f"unreadable npz ({error})") from None
    for s in splits:
        x, y = images[f"{s}_images"], labels[s]
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
            raise DataError(where, f"{s}_images has shape {x.shape}; expected (N,H,W) or (N,H,W,3)")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(where, f"{s}_labels has shape {y.shape}; expected (N,) or (N,1) (multi-label is not supported)")
        if len(x) != len(y):
            raise DataError(where, f"{s}_images has {len(x)} images but {s}_labels has {len(y)} labels")
        if y.size and (y.dtype.kind not in "ui" or y.min() < 0):
            raise DataError(where, f"{s}_labels must be non-negative integers")
        labels[s] = y.astype(np.int64)
    return images, labels
