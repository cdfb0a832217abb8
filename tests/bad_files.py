"""Bad files the bad-input tests build: shared by tests/data/test_bad_inputs.py and
tests/test_bad_input_table.py, so each kind is made one way."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file


def good_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(path)
    return path


def class_folders(root: Path, per_class: int = 4, classes=("a", "b")) -> Path:
    for c, name in enumerate(classes):
        for k in range(per_class):
            good_png(root / name / f"{k}.png", 100 * c + k)
    return root


def manifest(tmp_path: Path, rows: str, header: str = "case_id,image,label") -> Path:
    for k in range(6):
        good_png(tmp_path / "img" / f"{k}.png", k)
    path = tmp_path / "m.csv"
    path.write_text(header + "\n" + rows)
    return path


def deny_listing(folder: Path, monkeypatch) -> None:
    """chmod 000 on `folder`; where that is not enforced (root), listing it raises as it would."""
    folder.chmod(0)
    try:
        os.listdir(folder)
    except PermissionError:
        return
    original_iterdir, original_scandir = Path.iterdir, os.scandir

    def iterdir(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return original_iterdir(self)

    def scandir(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return original_scandir(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setattr(os, "scandir", scandir)  # what os.walk lists folders with


def two_frame_dicom(path: Path) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frame = ds.pixel_array
    ds.PixelData = np.stack([frame, frame[::-1]]).astype(frame.dtype).tobytes()
    ds.NumberOfFrames = 2
    ds.save_as(path)
    return path


def rt_dose(path: Path) -> Path:
    """CT_small relabelled as an RT dose grid: the pixels look like an image, the object is not one."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"
    ds.Modality = "RTDOSE"
    ds.save_as(path)
    return path


def fake_bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A tiny PNG whose header claims `width` x `height` pixels (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path
