"""Loose files and folders of unlabelled images, for `dualfuse predict`."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from dualfuse.data.base import DEFAULT_MODALITY, CaseDataset, CaseRecord, DataError, ImageRef, Transform, skip_or_raise
from dualfuse.data.sources.folders import image_extensions
from dualfuse.data.sources.manifest import FileReader

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_readable_file(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in image_extensions() or name.endswith(DICOM_SUFFIXES + NIFTI_SUFFIXES)


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file below `folder` (broken symlinks included, so they are reported, not
    lost); a folder that cannot be listed is an error naming it."""
    def fail(error: OSError) -> None:
        raise DataError(error.filename or folder, f"cannot list folder ({error.strerror or type(error).__name__})")

    found = []
    for top, dirs, files in os.walk(folder, onerror=fail, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(top) / name for name in files if not name.startswith("."))
    return found


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for images, DICOM and NIfTI files (sorted).

    A broken symlink is kept (reading it fails with "broken symlink"), never silently dropped.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in _walk(path) if _is_readable_file(p))
            if not found:
                raise DataError(str(path), "no image, DICOM or NIfTI files in this folder")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif path.is_symlink():
            raise DataError(str(path), "broken symlink")
        else:
            raise DataError(str(path), "file not found")
    return paths


class FileListDataset(CaseDataset):
    """One unlabelled case per file (PIL images, DICOM, one NIfTI slice).

    `case_ids` default to the paths as given; `open_inputs` passes ids relative to the folder given,
    so outputs never show absolute paths. A sample's patient id is "" (unknown), never the path.
    """

    patient_id_fallback = False

    def __init__(self, paths: Sequence[str | Path], reader: FileReader | None = None, modality: str = DEFAULT_MODALITY,
                 transform: Transform | None = None, skip_bad: bool = False, case_ids: Sequence[str] | None = None):
        self.reader = reader or FileReader()
        ids = [str(path) for path in paths] if case_ids is None else [str(i) for i in case_ids]
        if len(ids) != len(paths):
            raise ValueError(f"{len(ids)} case ids for {len(paths)} files")
        records, skipped = [], []
        for case_id, path in zip(ids, paths):
            try:
                records.append(CaseRecord(case_id, {modality: self.reader.ref_for(Path(path))}))
            except DataError as error:  # a NIfTI header is read here to pick the slice
                skip_or_raise(error, path, skip_bad, skipped)
        super().__init__(records, (modality,), {}, transform, skip_bad, skipped)

    def read_image(self, ref: ImageRef) -> torch.Tensor:
        return self.reader(ref)
