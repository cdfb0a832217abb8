"""A generated corpus of bad inputs: each must raise one `DataError` line naming file and problem."""
from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dualfuse.data.base import DataError
from dualfuse.data.sources import DicomDataset, ImageFolderDataset, ManifestDataset, MedMNISTDataset, NiftiDataset, read_dicom, read_pil
from dualfuse.data.sources.manifest import read_npy


def expect(call, where, problem):
    """`call()` raises DataError whose single-line message is `"<where>: <problem>..."`."""
    with pytest.raises(DataError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    assert re.match(re.escape(f"{where}: ") + problem, message), message
    return message


def good_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(path)
    return path


def save_nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


# --- image files ------------------------------------------------------------------------------
def test_truncated_image_file(tmp_path):
    data = good_png(tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    expect(lambda: read_pil(tmp_path / "cut.png"), tmp_path / "cut.png", "truncated image file")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    jpeg = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    expect(lambda: read_pil(tmp_path / "cut.jpg"), tmp_path / "cut.jpg", "truncated image file")


def test_text_file_renamed_png(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    expect(lambda: read_pil(tmp_path / "notes.png"), tmp_path / "notes.png", r"not an image")


def test_zero_size_file(tmp_path):
    good_png(tmp_path / "root" / "a" / "ok.png")
    (tmp_path / "root" / "a" / "empty.png").touch()
    expect(lambda: ImageFolderDataset(tmp_path / "root"), tmp_path / "root" / "a" / "empty.png", "zero-size file")


def test_zero_size_image(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 16), np.float32))
    expect(lambda: read_npy(tmp_path / "empty.npy"), tmp_path / "empty.npy", r"zero-size image \(0, 16\)")
    np.savez(
        tmp_path / "zero.npz",
        train_images=np.zeros((2, 0, 28), np.uint8), train_labels=np.zeros((2, 1), np.uint8),
    )
    expect(lambda: MedMNISTDataset(tmp_path / "zero.npz", split="train"), f"{tmp_path / 'zero.npz'}[train_images][0]", "zero-size image")


def test_unsupported_image_mode(tmp_path):
    Image.new("LAB", (8, 8), (50, 10, 20)).save(tmp_path / "lab.tif")
    expect(lambda: read_pil(tmp_path / "lab.tif"), tmp_path / "lab.tif", "unsupported image mode 'LAB'")


def test_multi_frame_image(tmp_path):
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    expect(lambda: read_pil(tmp_path / "stack.tif"), tmp_path / "stack.tif", r"multi-frame image \(2 frames\)")


def test_nan_image(tmp_path):
    values = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    values[2, 3] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    expect(lambda: read_pil(tmp_path / "nan.tif"), tmp_path / "nan.tif", "image contains 1 NaN/inf values")
    values[4, 4] = np.inf
    np.save(tmp_path / "nan.npy", values)
    expect(lambda: read_npy(tmp_path / "nan.npy"), tmp_path / "nan.npy", "image contains 2 NaN/inf values")


def test_constant_image(tmp_path):
    Image.new("L", (16, 16), 7).save(tmp_path / "flat.png")
    expect(lambda: read_pil(tmp_path / "flat.png"), tmp_path / "flat.png", "constant image")


# --- image folders ----------------------------------------------------------------------------
def test_empty_class_folder(tmp_path):
    good_png(tmp_path / "root" / "a" / "x.png")
    (tmp_path / "root" / "b").mkdir()
    (tmp_path / "root" / "b" / "readme.txt").write_text("no images here")
    expect(lambda: ImageFolderDataset(tmp_path / "root"), tmp_path / "root" / "b", "empty class folder")


def test_empty_folder(tmp_path):
    (tmp_path / "root").mkdir()
    expect(lambda: ImageFolderDataset(tmp_path / "root"), tmp_path / "root", "empty folder")
    (tmp_path / "root" / "train").mkdir()
    expect(lambda: ImageFolderDataset(tmp_path / "root"), tmp_path / "root" / "train", "empty folder")
    expect(lambda: ImageFolderDataset(tmp_path / "nowhere"), tmp_path / "nowhere", "image folder not found")


def test_mixed_split_and_class_folders(tmp_path):
    good_png(tmp_path / "root" / "train" / "a" / "x.png")
    good_png(tmp_path / "root" / "cats" / "y.png")
    expect(lambda: ImageFolderDataset(tmp_path / "root"), tmp_path / "root", "mixes split folders and class folders")


def test_missing_split_folder(tmp_path):
    good_png(tmp_path / "root" / "Training" / "a" / "x.png")
    assert ImageFolderDataset(tmp_path / "root").splits == {"train": 1}
    expect(lambda: ImageFolderDataset(tmp_path / "root", split="test"), tmp_path / "root", "no 'test' split folder")


# --- CSV manifests ----------------------------------------------------------------------------
@pytest.fixture
def manifest_dir(tmp_path):
    good_png(tmp_path / "img" / "a.png", 1)
    good_png(tmp_path / "img" / "b.png", 2)
    return tmp_path


def write_csv(folder: Path, text: str) -> Path:
    (folder / "m.csv").write_text(text)
    return folder / "m.csv"


def test_unreadable_manifest(tmp_path):
    expect(lambda: ManifestDataset(tmp_path / "missing.csv", ["x"]), tmp_path / "missing.csv", "manifest not found")
    (tmp_path / "bad.csv").write_bytes(b"x,y\n\xff\xfe\x00bad\n")
    expect(lambda: ManifestDataset(tmp_path / "bad.csv", ["x"]), tmp_path / "bad.csv", "unreadable CSV")


def test_missing_modality_column(manifest_dir):
    path = write_csv(manifest_dir, "case_id,xray,y\nc1,img/a.png,0\n")
    expect(lambda: ManifestDataset(path, ["xray", "ct"], ["y"]), path, r"missing column\(s\) \['ct'\]")


def test_missing_modality_file(manifest_dir):
    path = write_csv(manifest_dir, "case_id,xray,y\nc1,img/a.png,0\nc2,img/gone.png,1\n")
    message = expect(lambda: ManifestDataset(path, ["xray"], ["y"]), f"{path} line 3 (case c2) field 'xray'", "file not found")
    assert "img/gone.png" in message


def test_empty_modality_cell(manifest_dir):
    path = write_csv(manifest_dir, "case_id,xray,ct,y\nc1,img/a.png,,0\n")
    expect(lambda: ManifestDataset(path, ["xray", "ct"], ["y"]), f"{path} line 2 (case c1) field 'ct'", "empty path")


def test_label_not_in_class_list(manifest_dir):
    path = write_csv(manifest_dir, "case_id,xray,y\nc1,img/a.png,benign\nc2,img/b.png,malignnt\n")
    classes = {"y": ["benign", "malignant"]}
    expect(
        lambda: ManifestDataset(path, ["xray"], ["y"], classes=classes),
        f"{path} line 3 (case c2) field 'y'",
        re.escape("label 'malignnt' not in classes ['benign', 'malignant']"),
    )
    path = write_csv(manifest_dir, "case_id,xray,y\nc1,img/a.png,\n")
    expect(lambda: ManifestDataset(path, ["xray"], ["y"], classes=classes), f"{path} line 2 (case c1) field 'y'", "empty label")


# --- DICOM ------------------------------------------------------------------------------------
def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "header.dcm")
    expect(lambda: read_dicom(tmp_path / "header.dcm"), tmp_path / "header.dcm", "DICOM has no pixel data")
    expect(lambda: DicomDataset(tmp_path), tmp_path / "header.dcm", "DICOM has no pixel data")


def test_not_a_dicom_file(tmp_path):
    (tmp_path / "fake.dcm").write_text("plain text")
    expect(lambda: read_dicom(tmp_path / "fake.dcm"), tmp_path / "fake.dcm", "not a DICOM file")


# --- NIfTI ------------------------------------------------------------------------------------
def test_4d_nifti_where_3d_expected(tmp_path):
    volume = save_nifti(tmp_path / "bold.nii.gz", np.random.default_rng(0).random((8, 8, 6, 3)).astype(np.float32))
    expect(lambda: NiftiDataset({"c": {"t1": volume}}), volume, r"4D volume of shape \(8, 8, 6, 3\); expected a 3D volume")


def test_nifti_sequences_with_mismatched_shapes(tmp_path):
    rng = np.random.default_rng(0)
    t1 = save_nifti(tmp_path / "t1.nii.gz", rng.random((8, 8, 6)).astype(np.float32))
    t2 = save_nifti(tmp_path / "t2.nii.gz", rng.random((8, 8, 5)).astype(np.float32))
    expect(lambda: NiftiDataset({"c7": {"t1": t1, "t2": t2}}), "case c7", r"sequence shapes differ \(t1 \(8, 8, 6\), t2 \(8, 8, 5\)\)")


def test_nifti_nan_and_constant_volumes(tmp_path):
    values = np.random.default_rng(0).random((8, 8, 6)).astype(np.float32)
    values[1, 1, 1] = np.nan
    nan = save_nifti(tmp_path / "nan.nii.gz", values)
    expect(lambda: NiftiDataset({"c": {"t1": nan}})[0], nan, "image contains 1 NaN/inf values")
    flat = save_nifti(tmp_path / "flat.nii.gz", np.ones((8, 8, 6), np.float32))
    expect(lambda: NiftiDataset({"c": {"t1": flat}})[0], flat, "constant image")


# --- MedMNIST npz -----------------------------------------------------------------------------
def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "part.npz", train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros(2, np.uint8))
    expect(lambda: MedMNISTDataset(tmp_path / "part.npz"), tmp_path / "part.npz", r"missing npz keys \['val_images', 'val_labels', 'test_images', 'test_labels'\]")


def test_npz_labels_images_length_mismatch(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "odd.npz", train_images=images, train_labels=np.zeros((9, 1), np.uint8))
    expect(lambda: MedMNISTDataset(tmp_path / "odd.npz", split="train"), tmp_path / "odd.npz", "train_images has 10 images but train_labels has 9 labels")


def test_npz_not_a_zip(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 64)
    expect(lambda: MedMNISTDataset(tmp_path / "junk.npz"), tmp_path / "junk.npz", "unreadable npz")


# --- skip_bad: listed skips instead of errors ----------------------------------------------------
def test_skip_bad_folder_lists_every_skip(tmp_path):
    root = tmp_path / "root"
    for i in range(3):
        good_png(root / "a" / f"ok{i}.png", i)
        good_png(root / "b" / f"ok{i}.png", 10 + i)
    (root / "a" / "empty.png").touch()
    (root / "b" / "notes.png").write_text("text")
    data = (root / "a" / "ok0.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "c").mkdir()

    ds = ImageFolderDataset(root, skip_bad=True)
    assert len(ds) == 7  # the truncated file passes the cheap header probe ...
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["c", "empty.png", "notes.png"]
    ds.verify()  # ... and is dropped when every image is decoded
    assert len(ds) == 6 and len(ds.skipped) == 4
    assert dict(ds.skipped)[str(root / "b" / "cut.png")].endswith("truncated image file")
    assert ds.class_counts() == {"label": {"a": 3, "b": 3}}
    with pytest.raises(DataError):
        ImageFolderDataset(root).verify()


def test_skip_bad_manifest_lists_rows(manifest_dir):
    path = write_csv(manifest_dir, "case_id,xray,y\nc1,img/a.png,0\nc2,img/gone.png,1\nc3,,1\nc4,img/b.png,7\nc5,img/b.png,1\n")
    ds = ManifestDataset(path, ["xray"], ["y"], classes={"y": ["0", "1"]}, skip_bad=True)
    assert [r.case_id for r in ds.records] == ["c1", "c5"]
    assert [where for where, _ in ds.skipped] == [f"{path} line {n}" for n in (3, 4, 5)]
    assert all("(case c" in reason for _, reason in ds.skipped)
