"""Uploaded bytes → one preprocessed model input, with errors that never name the file.

An upload is written to a private temporary file whose suffix comes from its content (DICOM's
"DICM" marker, NIfTI's magic, gzip), never from the client's file name, and read by the same
`FileReader` that `predict` uses, so a served case is decoded and preprocessed exactly like a file
given to `dualfuse predict`. The readers' one-line `DataError`s name the temporary path; here the
form field takes its place. DICOM header values never reach a message (the DICOM reader names
only SOP class and modality constants).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from dualfuse.data.base import DataError
from dualfuse.data.sources.manifest import FileReader
from dualfuse.data.transforms import build_transforms
from dualfuse.models.spec import ModelSpec


class UploadError(ValueError):
    """A request the server refuses: an HTTP status and one line saying why (no file names)."""

    def __init__(self, status: int, message: str):
        super().__init__(" ".join(message.split()))
        self.status = status


def sniff_suffix(data: bytes) -> str:
    """The file suffix the readers dispatch on, from the content: DICOM, NIfTI, else an image PIL sniffs."""
    if data[128:132] == b"DICM":
        return ".dcm"
    if data[:2] == b"\x1f\x8b":
        return ".nii.gz"
    if data[344:348] in (b"n+1\x00", b"ni1\x00") or data[4:8] in (b"n+2\x00", b"ni2\x00"):
        return ".nii"
    return ".upload"


class UploadDecoder:
    """Decodes and preprocesses uploads for one model, as its training data was (its spec)."""

    def __init__(self, spec: ModelSpec):
        prep = spec.preprocessing
        if prep is None:
            raise ValueError(f"model {spec.name!r} has no preprocessing in its spec; re-export it with dualfuse")
        self.modalities = list(spec.modalities)
        self.reader = FileReader()
        self.transforms = build_transforms(self.modalities, train=False, img_size=prep.img_size, resize=prep.resize,
                                           normalize=prep.normalize,
                                           overrides={m: {"in_chans": prep.in_chans[m]} for m in self.modalities})

    def fields(self, names: list[str]) -> dict[str, str]:
        """Map form field names to modalities: one file for a single-input model (any field name),
        exactly one file per modality, named after it, for a multi-input model."""
        if len(self.modalities) == 1:
            if len(names) != 1:
                raise UploadError(422, f"this model takes one image; the request holds {len(names)} files")
            return {names[0]: self.modalities[0]}
        missing = [m for m in self.modalities if m not in names]
        unexpected = sorted({n for n in names if n not in self.modalities})
        repeated = sorted({n for n in names if names.count(n) > 1})
        if missing or unexpected or repeated:
            problems = [f"missing {', '.join(missing)}" if missing else "",
                        f"unexpected {', '.join(unexpected)}" if unexpected else "",
                        f"more than one file for {', '.join(repeated)}" if repeated else ""]
            raise UploadError(422, f"this model takes one file per modality, in fields named "
                                   f"{', '.join(self.modalities)}: {'; '.join(p for p in problems if p)}")
        return {n: n for n in names}

    def decode(self, field: str, modality: str, data: bytes) -> torch.Tensor:
        """One upload as the model's input tensor (C, H, W); `UploadError(400)` naming the field if unreadable."""
        if not data:
            raise UploadError(400, f"{field}: empty file")
        with tempfile.TemporaryDirectory(prefix="dualfuse-upload-") as folder:
            path = Path(folder) / f"upload{sniff_suffix(data)}"
            path.write_bytes(data)
            try:
                image = self.reader(self.reader.ref_for(path))
                return self.transforms[modality](image)
            except DataError as error:
                raise UploadError(400, _without(str(error), path, folder, field)) from None
            except (ValueError, RuntimeError, OSError) as error:  # a transform refusing the decoded image
                raise UploadError(400, f"{field}: {_without(str(error), path, folder, field)}") from None
            except Exception as error:  # a decoder library failing in its own way: its message could quote the file
                raise UploadError(400, f"{field}: cannot read this file ({type(error).__name__})") from None


def _without(message: str, path: Path, folder: str, field: str) -> str:
    """The reader's message with the temporary path replaced by the form field."""
    return message.replace(str(path), field).replace(folder, field)
