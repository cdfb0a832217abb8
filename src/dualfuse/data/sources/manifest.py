"""CSV manifests: one row per case, one path column per modality, one label column per task."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

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
from dualfuse.data.sources.dicom import DICOM_EXTENSIONS, Window, check_window, read_dicom
from dualfuse.data.sources.folders import read_pil
from dualfuse.data.sources.nifti import (
    DEFAULT_PERCENTILES,
    SlicePolicy,
    is_nifti,
    read_nifti_slice,
    select_slices,
    volume_shape,
)

__all__ = ["ManifestDataset", "FileReader", "read_npy"]


def read_npy(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """A 2D (H,W) or (H,W,C) `.npy` array; integers scaled by their dtype maximum, floats kept raw."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(str(path), f"unreadable npy ({error})") from None
    validate_pixels(array, path)
    if array.dtype.kind in "ui":
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    return to_chw(array, channels, path)


class FileReader:
    """Decode any supported file by suffix: DICOM, NIfTI (one slice), `.npy`, else PIL.

    For NIfTI the `ImageRef.index` is the slice (resolved from `nifti_slice` by `ref_for`).
    """

    def __init__(
        self,
        channels: int | None = None,
        window: Window = None,
        nifti_slice: SlicePolicy = "central",
        nifti_axis: int = 2,
        percentiles: tuple[float, float] | None = DEFAULT_PERCENTILES,
    ):
        if not (nifti_slice == "central" or isinstance(nifti_slice, int)):
            raise ValueError(f"a manifest cell is one slice: nifti_slice must be 'central' or an int, got {nifti_slice!r}")
        check_window(window)
        self.channels = channels
        self.window = window
        self.nifti_slice = nifti_slice
        self.nifti_axis = nifti_axis
        self.percentiles = percentiles

    def ref_for(self, path: Path) -> ImageRef:
        if is_nifti(path):
            (index,) = select_slices(volume_shape(path), self.nifti_axis, self.nifti_slice)
            return ImageRef(str(path), index=index, axis=self.nifti_axis)
        return ImageRef(str(path))

    def __call__(self, ref: ImageRef) -> torch.Tensor:
        suffix = Path(ref.path).suffix.lower()
        if is_nifti(ref.path):
            return read_nifti_slice(ref.path, ref.index, ref.axis, self.percentiles, self.channels)
        if suffix in DICOM_EXTENSIONS:
            return read_dicom(ref.path, ref.index, self.window, self.channels)
        if suffix == ".npy":
            return read_npy(ref.path, self.channels)
        return read_pil(ref.path, self.channels)


#: Cells that spreadsheets and pandas write for a missing value: never a class, unless the class
#: list given names one of them.
MISSING_LABELS = frozenset({"nan", "NaN", "NAN", "-nan", "-NaN", "NA", "N/A", "n/a", "#N/A", "<NA>", "NULL", "null", "None"})


def _infer_classes(values: Sequence[str]) -> list[str]:
    """Integer labels keep their value as index ("0".."max"); names are sorted. Missing-value cells
    (`MISSING_LABELS`) are not classes."""
    unique = sorted(set(values) - MISSING_LABELS)
    if unique and all(v.lstrip("-").isdigit() for v in unique):
        return [str(i) for i in range(max(int(v) for v in unique) + 1)]
    return unique


def _label_index(value: str, names: Sequence[str], where: str) -> int:
    if value in names:
        return list(names).index(value)
    if value.lstrip("-").isdigit() and 0 <= int(value) < len(names):
        return int(value)
    raise DataError(where, f"label {value!r} not in classes {list(names)}")


class ManifestDataset(CaseDataset):
    """Cases listed in a CSV: `modalities` and `tasks` name its columns.

    Paths are relative to the manifest's folder (absolute paths are kept). Optional columns
    `case_column` (else the line number is the id), `patient_column` and `split_column`.
    Class lists per task are given in `classes` or inferred (see `_infer_classes`). Errors name
    the manifest, its line, the case and the field. A manifest without rows, a missing column, or a
    case id listed twice is an error even with `skip_bad` (the whole table is wrong, not one row);
    an empty or missing-value label (`nan`, `NA`, ...) is a bad row.
    """

    def __init__(
        self,
        manifest: str | Path,
        modalities: Sequence[str],
        tasks: Sequence[str] = (),
        classes: Mapping[str, Sequence[str]] | None = None,
        split: str | None = None,
        case_column: str = "case_id",
        patient_column: str = "patient_id",
        split_column: str = "split",
        reader: FileReader | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
    ):
        self.manifest = Path(manifest)
        self.reader = reader or FileReader()
        table = _read_csv(self.manifest)
        missing = [c for c in (*modalities, *tasks) if c not in table.columns]
        if missing:
            raise DataError(str(self.manifest), f"missing column(s) {missing} (has {list(table.columns)})")
        if split is not None and split_column not in table.columns:
            raise DataError(str(self.manifest), f"split {split!r} requested but there is no {split_column!r} column")
        if table.empty:
            raise DataError(str(self.manifest), "no cases (a header line but no rows)")
        case_ids = [row.get(case_column) or f"line{n + 2}" for n, row in enumerate(table.to_dict("records"))]
        _check_unique(self.manifest, case_ids, case_column)
        names = {t: [str(c) for c in (classes or {}).get(t) or _infer_classes([v for v in table[t] if v])] for t in tasks}

        records, skipped = [], []
        for row_number, (row, case_id) in enumerate(zip(table.to_dict("records"), case_ids)):
            line = row_number + 2  # 1-based, after the header line
            row_split = row.get(split_column) or None
            if split is not None and row_split != split:
                continue
            try:
                records.append(self._record(row, line, case_id, modalities, tasks, names, patient_column, row_split))
            except DataError as error:
                skip_or_raise(error, f"{self.manifest} line {line}", skip_bad, skipped)
        super().__init__(records, modalities, names, transform, skip_bad, skipped)

    def _record(self, row, line, case_id, modalities, tasks, names, patient_column, row_split) -> CaseRecord:
        def where(field: str) -> str:
            return f"{self.manifest} line {line} (case {case_id}) field {field!r}"

        images = {}
        for modality in modalities:
            cell = row[modality].strip()
            if not cell:
                raise DataError(where(modality), "empty path")
            path = Path(cell) if Path(cell).is_absolute() else self.manifest.parent / cell
            if not path.is_file():
                raise DataError(where(modality), f"file not found: {path}")
            images[modality] = self.reader.ref_for(path)
        labels = {}
        for task in tasks:
            value = row[task].strip()
            if not value:
                raise DataError(where(task), "empty label")
            if value in MISSING_LABELS and value not in names[task]:
                raise DataError(where(task), f"missing label {value!r}")
            labels[task] = _label_index(value, names[task], where(task))
        return CaseRecord(case_id, images, labels, row.get(patient_column) or None, row_split)

    def read_image(self, ref: ImageRef) -> torch.Tensor:
        return self.reader(ref)


def _read_csv(path: Path) -> pd.DataFrame:
    """All cells as stripped strings, empty cells as "" (never NaN)."""
    if not path.is_file():
        raise DataError(str(path), "manifest not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except UnicodeDecodeError as error:
        byte = error.object[error.start] if error.start < len(error.object) else 0
        raise DataError(str(path), f"unreadable CSV: not UTF-8 text (found byte 0x{byte:02x}); save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(str(path), "unreadable CSV: the file is empty (no header line)") from None
    except (ValueError, OSError) as error:  # pandas' ParserError is a ValueError
        raise DataError(str(path), f"unreadable CSV ({type(error).__name__}: {error})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _check_unique(manifest: Path, case_ids: Sequence[str], column: str) -> None:
    """Two rows with one case id would be silently merged by every split file: name them."""
    lines: dict[str, list[int]] = {}
    for n, case_id in enumerate(case_ids):
        lines.setdefault(case_id, []).append(n + 2)
    repeated = {case_id: at for case_id, at in lines.items() if len(at) > 1}
    if repeated:
        shown = ", ".join(f"{case_id!r} (lines {', '.join(map(str, at))})" for case_id, at in list(repeated.items())[:5])
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise DataError(str(manifest), f"duplicate case id(s) in column {column!r}: {shown}{more}")
