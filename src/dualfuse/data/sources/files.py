"""Loose files and folders of unlabelled images, for `dualfuse predict`."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dualfuse.data.base import DEFAULT_MODALITY, CaseDataset, CaseRecord, DataError, ImageRef, Transform
from dualfuse.data.sources.folders import image_extensions
from dualfuse.data.sources.manifest import FileReader

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_readable_file(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in image_extensions() or name.endswith(DICOM_SUFFIXES + NIFTI_SUFFIXES)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for images, DICOM and NIfTI files (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and _is_readable_file(p))
            if not found:
                raise DataError(str(path), "no image, DICOM or NIfTI files in this folder")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(str(path), "file not found")
    return paths


class FileListDataset(CaseDataset):
    """One unlabelled case per file (PIL images, DICOM, one NIfTI slice); the case id is the path."""

    def __init__(self, paths: Sequence[str | Path], reader: FileReader | None = None, modality: str = DEFAULT_MODALITY,
                 transform: Transform | None = None, skip_bad: bool = False):
        self.reader = reader or FileReader()
        records = [CaseRecord(str(path), {modality: self.reader.ref_for(Path(path))}) for path in paths]
        super().__init__(records, (modality,), {}, transform, skip_bad)

    def read_image(self, ref: ImageRef) -> torch.Tensor:
        return self.reader(ref)
