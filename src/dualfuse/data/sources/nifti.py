"""NIfTI volumes (nibabel) as 2D slices, with co-registered sequences as modalities."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np
import torch
from nibabel.filebasedimages import ImageFileError

from dualfuse.data.base import (
    CaseDataset,
    CaseRecord,
    DataError,
    ImageRef,
    Transform,
    skip_or_raise,
    to_chw,
    validate_pixels,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiDataset",
    "SlicePolicy",
    "is_nifti",
    "load_volume",
    "normalize_volume",
    "read_nifti_slice",
    "select_slices",
    "volume_shape",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: "central", "all", an explicit slice index, or ("foreground", k): every k-th slice that has
#: foreground (any sequence above `threshold`) somewhere in it.
SlicePolicy = Union[str, int, tuple[str, int]]

#: Default per-volume percentile clip before scaling to [0,1].
DEFAULT_PERCENTILES = (0.5, 99.5)


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _open(path: str | Path) -> nib.spatialimages.SpatialImage:
    where = str(path)
    if not Path(path).is_file():
        raise DataError(where, "file not found")
    if Path(path).stat().st_size == 0:
        raise DataError(where, "zero-size file")
    try:
        return nib.load(str(path))
    except (ImageFileError, OSError, EOFError, ValueError) as error:
        raise DataError(where, f"unreadable NIfTI ({type(error).__name__}: {error})") from None


def volume_shape(path: str | Path) -> tuple[int, int, int]:
    """3D shape from the header alone; trailing singleton dimensions are dropped, 4D is an error."""
    shape = tuple(int(n) for n in _open(path).shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(str(path), f"{len(shape)}D volume of shape {shape}; expected a 3D volume")
    return shape  # type: ignore[return-value]


def load_volume(path: str | Path) -> np.ndarray:
    """float32 3D voxel array (scaled by the header's slope/intercept), checked for NaN/constant."""
    shape = volume_shape(path)
    try:
        volume = np.asarray(_open(path).get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as error:  # gzip/zlib/nibabel raise many types for truncated or corrupt data
        raise DataError(str(path), f"cannot read NIfTI voxels ({type(error).__name__}: {error})") from None
    validate_pixels(volume, path)
    return volume


def normalize_volume(volume: np.ndarray, percentiles: tuple[float, float] | None = DEFAULT_PERCENTILES) -> np.ndarray:
    """Clip to the given percentiles of the nonzero (foreground) voxels and scale to [0,1].

    Using foreground voxels keeps the large zero background of skull-stripped MRI from pulling
    the low percentile to 0; background stays at 0. `None` keeps raw intensities (e.g. CT HU).
    """
    if percentiles is None:
        return volume
    foreground = volume[volume != 0]
    values = foreground if foreground.size else volume
    lo, hi = np.percentile(values, percentiles)
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    out = np.clip((volume - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)
    out[volume == 0] = 0.0
    return out


def select_slices(shape: Sequence[int], axis: int, policy: SlicePolicy, volumes: Sequence[np.ndarray] = (), threshold: float = 0.0) -> list[int]:
    """Slice indices along `axis` for `policy`; foreground is the union over `volumes`."""
    n = int(shape[axis])
    if policy == "central":
        return [n // 2]
    if policy == "all":
        return list(range(n))
    if isinstance(policy, (int, np.integer)) and not isinstance(policy, bool):
        if not -n <= policy < n:
            raise ValueError(f"slice {policy} out of range for {n} slices along axis {axis}")
        return [int(policy) % n]
    if isinstance(policy, (tuple, list)) and len(policy) == 2 and policy[0] == "foreground" and int(policy[1]) >= 1:
        other = tuple(a for a in range(len(shape)) if a != axis)
        has_fg = np.zeros(n, dtype=bool)
        for volume in volumes:
            has_fg |= (volume > threshold).any(axis=other)
        return [int(i) for i in np.flatnonzero(has_fg)[:: int(policy[1])]]
    raise ValueError(f"slices must be 'central', 'all', an int or ('foreground', k>=1), got {policy!r}")


def read_nifti_slice(
    path: str | Path,
    index: SlicePolicy = "central",
    axis: int = 2,
    percentiles: tuple[float, float] | None = DEFAULT_PERCENTILES,
    channels: int | None = None,
) -> torch.Tensor:
    """One slice of a 3D NIfTI (e.g. a manifest cell) as float32 (C,H,W); `index` int or "central"."""
    volume = load_volume(path)
    (i,) = select_slices(volume.shape, axis, index if index == "central" else int(index))
    return to_chw(np.take(normalize_volume(volume, percentiles), i, axis=axis), channels, path)


class NiftiDataset(CaseDataset):
    """Co-registered 3D volumes, one record per selected slice, one modality per sequence.

    `cases` maps case id -> {modality: path}; every sequence of a case must have the same shape
    (co-registration is assumed, a shape mismatch is a `DataError`), and all modalities of a
    record are the same slice index. Each volume is percentile-normalised on its own (see
    `normalize_volume`). Slices are raw voxel-axis planes (no reorientation). Blank slices are
    allowed (they are real background); constant or NaN volumes are not.
    `labels` maps case id -> {task: class index} and needs `classes`.
    """

    allow_constant = True

    def __init__(
        self,
        cases: Mapping[str, Mapping[str, str | Path]],
        slices: SlicePolicy = "central",
        axis: int = 2,
        threshold: float = 0.0,
        percentiles: tuple[float, float] | None = DEFAULT_PERCENTILES,
        labels: Mapping[str, Mapping[str, int]] | None = None,
        classes: Mapping[str, Sequence[str]] | None = None,
        channels: int | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
    ):
        if not cases:
            raise ValueError("no NIfTI cases given")
        modalities = tuple(next(iter(cases.values())))
        self.axis = axis
        self.percentiles = percentiles
        self.channels = channels
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = len(modalities)
        records, skipped = [], []
        for case_id, files in cases.items():
            try:
                indices = self._case_slices(case_id, files, modalities, slices, threshold)
            except DataError as error:
                skip_or_raise(error, next(iter(files.values()), case_id), skip_bad, skipped)
                continue
            for i in indices:
                records.append(
                    CaseRecord(
                        case_id=f"{case_id}#{i}",
                        images={m: ImageRef(str(files[m]), index=i, axis=axis) for m in modalities},
                        labels=dict((labels or {}).get(case_id, {})),
                        patient_id=case_id,
                    )
                )
        super().__init__(records, modalities, classes, transform, skip_bad, skipped)

    @classmethod
    def from_folder(cls, folder: str | Path, modalities: Sequence[str], suffix: str = ".nii.gz", **kwargs) -> NiftiDataset:
        """One case from `folder/<modality><suffix>` files (the BraTS layout); case id = folder name."""
        folder = Path(folder)
        return cls({folder.name: {m: folder / f"{m}{suffix}" for m in modalities}}, **kwargs)

    def _case_slices(self, case_id: str, files: Mapping[str, str | Path], modalities, policy, threshold) -> list[int]:
        if tuple(files) != modalities:
            raise DataError(f"case {case_id}", f"sequences {list(files)} differ from {list(modalities)}")
        shapes = {m: volume_shape(path) for m, path in files.items()}
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{m} {s}" for m, s in shapes.items())
            raise DataError(f"case {case_id}", f"sequence shapes differ ({detail}); sequences must be co-registered")
        shape = next(iter(shapes.values()))
        volumes = [load_volume(p) for p in files.values()] if isinstance(policy, (tuple, list)) else []
        return select_slices(shape, self.axis, policy, volumes, threshold)

    def volume(self, path: str) -> np.ndarray:
        """Normalised volume, cached (one per modality) because consecutive slices share it."""
        if path not in self._cache:
            self._cache[path] = normalize_volume(load_volume(path), self.percentiles)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(path)
        return self._cache[path]

    def read_image(self, ref: ImageRef) -> torch.Tensor:
        return to_chw(np.take(self.volume(ref.path), ref.index, axis=ref.axis), self.channels, ref)
