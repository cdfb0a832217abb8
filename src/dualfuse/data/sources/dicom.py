"""DICOM files (pydicom): modality LUT, windowing, MONOCHROME1 inversion, multi-frame.

Nothing identifying ever leaves this module: case ids come from file paths (plus `#<frame>`),
`patient_id` is the file's case id (frames of one file stay together), and error messages name
the file, never a header value.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID

from dualfuse.data.base import (
    DEFAULT_MODALITY,
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
    "DICOM_EXTENSIONS",
    "NON_IMAGE_MODALITIES",
    "WINDOW_PRESETS",
    "DicomDataset",
    "Window",
    "apply_window",
    "check_window",
    "find_dicom_files",
    "num_frames",
    "read_dicom",
]

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic"})

#: CT windows as (center, width) in Hounsfield units; they mean nothing for MR or X-ray.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (50.0, 400.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}

#: None/"auto": the file's own window if it has one, else min-max. "file": the file's window
#: (error if absent). "minmax": per-image range. A preset name or an explicit (center, width).
#: "raw": the modality-LUT values themselves (CT in HU), unscaled and never inverted.
Window = Union[None, str, tuple[float, float]]


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: [center - width/2, center + width/2] -> [0, 1], clipped."""
    lo = center - width / 2.0
    return np.clip((values - lo) / max(float(width), 1e-6), 0.0, 1.0).astype(np.float32)


def _first(value) -> float:
    """WindowCenter/WindowWidth may be multi-valued; the first pair is the default view."""
    return float(value[0]) if isinstance(value, pydicom.multival.MultiValue) else float(value)


_WINDOW_MODES = ("auto", "file", "minmax", "raw")


def check_window(window: Window) -> None:
    """Reject an unknown window up front instead of at the first image."""
    if window is None or isinstance(window, (tuple, list)) and len(window) == 2:
        return
    if window not in _WINDOW_MODES and window not in WINDOW_PRESETS:
        raise ValueError(f"unknown window {window!r}; use a preset {sorted(WINDOW_PRESETS)}, (center, width), or one of {_WINDOW_MODES}")


def _resolve_window(ds: pydicom.Dataset, window: Window, where: str) -> tuple[float, float] | None:
    """(center, width), or None for min-max scaling."""
    if isinstance(window, (tuple, list)):
        return float(window[0]), float(window[1])
    if window in (None, "auto", "file"):
        if "WindowCenter" in ds and "WindowWidth" in ds:
            return _first(ds.WindowCenter), _first(ds.WindowWidth)
        if window == "file":
            raise DataError(where, "DICOM has no WindowCenter/WindowWidth (window='file')")
        return None
    if window in ("minmax", "raw"):
        return None
    check_window(window)
    return WINDOW_PRESETS[window]


#: SOP classes that hold no image to classify (dose grids, contours, plans, reports, waveforms,
#: documents, registrations, segmentations), by exact UID ...
_NON_IMAGE_SOP_CLASSES = frozenset(
    {f"1.2.840.10008.5.1.4.1.1.481.{n}" for n in range(2, 11)}  # RT Dose, Structure Set, Plan, records ...
    | {"1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.67"}  # raw data, real-world value mapping
)
#: ... and by UID family (the UID itself or anything below it).
_NON_IMAGE_SOP_FAMILIES = (
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.9",  # waveforms (ECG, audio, ...)
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated PDF/CDA/STL
    "1.2.840.10008.5.1.4.1.1.66",  # registrations, fiducials, segmentations, surfaces
)
#: Modality values of non-image objects (checked too: a file may carry a generic SOP class).
NON_IMAGE_MODALITIES = frozenset(
    {"RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "KO", "PR", "SEG", "REG", "FID", "DOC", "ECG", "HD", "AU",
     "RWV", "PLAN", "RESP"}
)


def _non_image(ds: pydicom.Dataset) -> str | None:
    """What makes `ds` a non-image object ("SOP class RT Dose Storage, modality RTDOSE"), or None.

    Only the SOP class and modality are named, and only when they are on the lists above (known
    constants): no other header value, and nothing free-text, ever reaches a message.
    """
    meta = getattr(ds, "file_meta", None)
    uid = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else "")).strip()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    uid_bad = uid in _NON_IMAGE_SOP_CLASSES or any(uid == f or uid.startswith(f + ".") for f in _NON_IMAGE_SOP_FAMILIES)
    parts = []
    if uid_bad:
        parts.append(f"SOP class {UID(uid).name}")
    if modality in NON_IMAGE_MODALITIES:
        parts.append(f"modality {modality}")
    return ", ".join(parts) or None


def _dcmread(path: str | Path, header_only: bool = False) -> pydicom.Dataset:
    where = str(path)
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise DataError(where, "zero-size file")
    try:
        # defer_size keeps a header-only read cheap while still listing the PixelData element
        ds = pydicom.dcmread(path, defer_size="1 KB" if header_only else None)
    except FileNotFoundError:
        raise DataError(where, "file not found") from None
    except InvalidDicomError:
        raise DataError(where, "not a DICOM file (no DICM preamble)") from None
    except (OSError, ValueError, EOFError, AttributeError, KeyError) as error:
        raise DataError(where, f"unreadable DICOM ({type(error).__name__})") from None
    kind = _non_image(ds)
    if kind is not None:
        raise DataError(where, f"not an image ({kind}); expected a 2D image")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(where, "DICOM has no pixel data")
    return ds


def num_frames(path: str | Path) -> int:
    """Frames in a DICOM file, from its header only."""
    ds = _dcmread(path, header_only=True)
    return int(ds.get("NumberOfFrames", 1) or 1)


def read_dicom(path: str | Path, frame: int | None = None, window: Window = None, channels: int | None = None) -> torch.Tensor:
    """One DICOM image (or frame `frame` of a multi-frame file) as float32 (C,H,W) in [0,1]
    (modality-LUT values instead with `window="raw"`).

    A multi-frame file without a `frame` is an error, as for multi-frame GIF/TIFF: silently taking
    frame 0 would classify one slice of a stack. Non-image objects (RT dose grids, structure sets,
    plans, reports, ...) are refused by SOP class and modality.

    Grey images: stored values -> modality LUT (RescaleSlope/Intercept, e.g. CT Hounsfield) ->
    window (see `Window`) -> MONOCHROME1 inverted so that bright always means dense/high signal.
    Colour images (SamplesPerPixel 3; pydicom converts YBR to RGB) are scaled by their bit depth.
    """
    where = str(path)
    ds = _dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise DataError(where, f"multi-frame image ({frames} frames); expected one 2D image")
    if frames > 1 and not 0 <= frame < frames:
        raise DataError(where, f"frame {frame} out of range ({frames} frames)")
    if frames == 1 and frame not in (None, 0):
        raise DataError(where, f"frame {frame} out of range (single-frame file)")
    try:
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises many types for missing decoders / corrupt data
        raise DataError(where, f"cannot decode DICOM pixel data ({type(error).__name__}: {error})") from None
    colour = int(ds.get("SamplesPerPixel", 1)) > 1
    if frames > 1:
        pixels = pixels[frame]
    if pixels.ndim != (3 if colour else 2):
        raise DataError(where, f"unexpected pixel array shape {pixels.shape}")
    validate_pixels(pixels, where)

    if colour:
        bits = int(ds.get("BitsStored", 8))
        return to_chw(pixels.astype(np.float32) / float(2**bits - 1), channels, where)

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if window == "raw":
        return to_chw(values.astype(np.float32), channels, where)
    window_cw = _resolve_window(ds, window, where)
    if window_cw is None:
        lo, hi = values.min(), values.max()
        image = ((values - lo) / (hi - lo)).astype(np.float32)
    else:
        image = apply_window(values, *window_cw)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        image = 1.0 - image
    return to_chw(image, channels, where)


def find_dicom_files(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """A file, a folder (searched recursively for DICOM suffixes) or an explicit list of files."""
    if isinstance(source, (str, Path)):
        source = Path(source)
        if source.is_dir():
            files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in DICOM_EXTENSIONS)
            if not files:
                raise DataError(str(source), "no DICOM files (*.dcm, *.dicom, *.dic) in folder")
            return files
        return [source]
    return [Path(p) for p in source]


class DicomDataset(CaseDataset):
    """DICOM files as unlabelled single-modality cases (labels come from a manifest).

    `frames="all"` makes one record per frame of multi-frame files; an int picks that frame.
    Case ids are paths relative to `source` (a folder) or file stems, never header values.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        window: Window = None,
        frames: str | int = "all",
        channels: int | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
        modality: str = DEFAULT_MODALITY,
    ):
        self.window = window
        self.channels = channels
        check_window(window)
        base = Path(source) if isinstance(source, (str, Path)) and Path(source).is_dir() else None
        records, skipped = [], []
        for path in find_dicom_files(source):
            case_id = path.relative_to(base).with_suffix("").as_posix() if base else path.stem
            try:
                count = num_frames(path)
            except DataError as error:
                skip_or_raise(error, path, skip_bad, skipped)
                continue
            if frames == "all":
                indices = range(count) if count > 1 else [None]
            elif isinstance(frames, int):
                indices = [frames]
            else:
                raise ValueError(f"frames must be 'all' or an int, got {frames!r}")
            for i in indices:
                records.append(
                    CaseRecord(
                        case_id=case_id if i is None else f"{case_id}#{i}",
                        images={modality: ImageRef(str(path), index=i)},
                        patient_id=case_id,
                    )
                )
        super().__init__(records, (modality,), {}, transform, skip_bad, skipped)

    def read_image(self, ref: ImageRef) -> torch.Tensor:
        return read_dicom(ref.path, ref.index, self.window, self.channels)
