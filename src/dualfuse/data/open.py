"""The two ways data enters dualfuse, so every command reads a given input the same way.

- `open_source`: a configured dataset (`SourceConfig`: MedMNIST npz, image folder or CSV manifest),
  what `train`, `evaluate` and `data check` read;
- `open_inputs`: what `predict` and `explain` read: image/DICOM/NIfTI files and folders, one CSV
  manifest, or one MedMNIST npz, always without ground truth.

The format words are `SOURCE_FORMATS` ("medmnist", "folder", "manifest") everywhere: config files,
`data check --format` and `detect_format`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dualfuse.config import SOURCE_FORMATS, SourceConfig, expand_path
from dualfuse.data.base import DEFAULT_MODALITY, DEFAULT_TASK, CaseDataset, CaseRecord, DataError
from dualfuse.data.sources import FileListDataset, FileReader, ImageFolderDataset, ManifestDataset, MedMNISTDataset
from dualfuse.data.sources.files import expand_inputs

__all__ = ["detect_format", "open_inputs", "open_source", "source_config"]


def detect_format(path: str | Path) -> str:
    """The `SOURCE_FORMATS` word for `path`: a folder, a `.npz` (MedMNIST) or a `.csv`/`.tsv` manifest."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "medmnist"
    if suffix in (".csv", ".tsv"):
        return "manifest"
    raise DataError(path, f"cannot tell the dataset format (not a folder, .npz or .csv); pass --format {'|'.join(SOURCE_FORMATS)}")


def source_config(
    path: str | Path,
    format: str | None = None,
    modalities: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> SourceConfig:
    """A `SourceConfig` for a path given on the command line (`data check SOURCE`), format detected.

    It goes through the same `open_source` as a run config, so `data check` reads what `train` reads.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise DataError(path, "not found")
    format = format or detect_format(path)
    if format not in SOURCE_FORMATS:
        raise ValueError(f"format must be one of {list(SOURCE_FORMATS)}, got {format!r}")
    return SourceConfig(
        format=format, path=str(path),
        modalities=list(modalities) if modalities else None,
        tasks=list(tasks) if tasks is not None else None,
    )


def open_source(name: str, source: SourceConfig, *, skip_bad: bool = False) -> CaseDataset:
    """Read one configured source (all splits); a missing path fails with one line naming the key.

    With `skip_bad` bad images are dropped and listed in the dataset's `skipped` (`data.skip_bad`;
    `data check` always uses it so that one report lists every bad file).
    """
    key = f"data.sources.{name}.path"
    path = expand_path(source.path, key) if source.path else None
    if path is None or not (path.exists() or path.is_symlink()):
        if source.format == "medmnist" and source.download:
            return MedMNISTDataset(source.download, channels=source.channels, classes=source.classes, skip_bad=skip_bad)
        raise FileNotFoundError(f"{key}: {path} not found")
    if source.format == "medmnist":
        return MedMNISTDataset(path, channels=source.channels, classes=source.classes, skip_bad=skip_bad)
    if source.format == "folder":
        return ImageFolderDataset(path, channels=source.channels, classes=source.classes, skip_bad=skip_bad)
    if source.format != "manifest":
        raise ValueError(f"data.sources.{name}.format must be one of {list(SOURCE_FORMATS)}, got {source.format!r}")
    tasks = list(source.tasks) if source.tasks is not None else [DEFAULT_TASK]
    return ManifestDataset(
        path, modalities=source.modalities or [DEFAULT_MODALITY], tasks=tasks,
        classes={tasks[0]: source.classes} if source.classes and len(tasks) == 1 else None,
        reader=FileReader(channels=source.channels), skip_bad=skip_bad,
    )


def open_inputs(
    inputs: list[str], modalities: list[str], split: str | None = None, skip_bad: bool = False
) -> CaseDataset:
    """Unlabelled cases for `predict`/`explain`: files and folders, one CSV manifest, or one MedMNIST npz.

    Labels are never read (a model's output must not depend on, or echo, ground truth). Case ids
    are relative to the folder given (a file given directly: its file name) and the patient id is
    empty unless a manifest names it: paths can identify patients and must not leak into outputs.
    With `skip_bad` every image is decoded once here and bad ones are listed in `skipped`.
    """
    inputs = [str(item) for item in inputs]
    modalities = list(modalities)
    if not inputs:
        raise ValueError("no inputs given")
    if split is not None and not (len(inputs) == 1 and inputs[0].lower().endswith(".npz")):
        raise ValueError(f"split {split!r} applies to a MedMNIST .npz input only")
    single = inputs[0] if len(inputs) == 1 else None
    if single is not None and single.lower().endswith((".csv", ".tsv")):
        dataset: CaseDataset = ManifestDataset(single, modalities=modalities, tasks=(), skip_bad=skip_bad)
    elif single is not None and single.lower().endswith(".npz"):
        if len(modalities) > 1:
            raise ValueError(f"this model takes {len(modalities)} modalities {modalities}: a MedMNIST .npz holds one; "
                             "give a CSV manifest with one column per modality")
        loaded = MedMNISTDataset(single, split=split, skip_bad=skip_bad, modality=modalities[0])
        # Drop the labels, so the output has no ground-truth columns.
        dataset = loaded.with_records(
            [CaseRecord(r.case_id, r.images, {}, r.patient_id, r.split) for r in loaded.records]
        )
        dataset.classes = {}
    else:
        if len(modalities) > 1:
            raise ValueError(f"this model takes {len(modalities)} modalities {modalities}: give a CSV manifest with one "
                             "column per modality")
        paths, ids = _relative_ids(inputs)
        dataset = FileListDataset(paths, FileReader(), modality=modalities[0], skip_bad=skip_bad, case_ids=ids)
    dataset.patient_id_fallback = False
    if skip_bad:
        dataset.verify()
    return dataset


def _relative_ids(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files of `inputs` and their case ids: the path below the folder given, or the file name.

    The same file given twice is read once; two different files with one id are an error naming both.
    """
    paths: list[Path] = []
    ids: list[str] = []
    owner: dict[str, Path] = {}
    seen: set[str] = set()
    for item in inputs:
        root = Path(item)
        for path in expand_inputs([root]):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            case_id = path.relative_to(root).as_posix() if root.is_dir() else path.name
            if case_id in owner:
                raise DataError(path, f"case id {case_id!r} is also the id of {owner[case_id]}; "
                                      "predict them separately or give their common parent folder")
            owner[case_id] = path
            paths.append(path)
            ids.append(case_id)
    return paths, ids
