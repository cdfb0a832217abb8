"""A generated corpus of bad inputs: each must raise one `DataError` line naming file and problem."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bad_files import class_folders, deny_listing, fake_bomb_png, good_png, manifest, rt_dose, two_frame_dicom
from PIL import Image
from pydicom.data import get_testdata_file

from dualfuse.data.base import DataError
from dualfuse.data.sources import (
    DicomDataset,
    ImageFolderDataset,
    ManifestDataset,
    MedMNISTDataset,
    NiftiDataset,
    read_dicom,
    read_pil,
)
from dualfuse.data.sources.manifest import read_npy


def expect(call, where, problem):
    """`call()` raises DataError whose single-line message is `"<where>: <problem>..."`."""
    with pytest.raises(DataError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    assert re.match(re.escape(f"{where}: ") + problem, message), message
    return message


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


# --- one table of bad inputs, each with its one line (issue 17) -------------------------------------
# Every row builds its bad input in tmp_path and names the command that reads it, the exit status
# and the line the user sees (a regex). Exit 2: the input cannot be read at all (one line on stderr);
# exit 1: `data check` reports a finding. No row may print a traceback.
def build_bomb(tmp_path, monkeypatch):
    fake_bomb_png(class_folders(tmp_path / "root") / "a" / "huge.png")
    return [tmp_path / "root"]


def build_bomb_warning(tmp_path, monkeypatch):
    """Over MAX_IMAGE_PIXELS but under twice it: PIL only warns (and would decode it)."""
    root = class_folders(tmp_path / "root")
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (40, 40), dtype=np.uint8)).save(root / "b" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 16x16 images pass, 40x40 = 1600 does not
    return [root]


@pytest.fixture
def restore_permissions(tmp_path):
    yield
    for path in tmp_path.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


def build_unlistable(tmp_path, monkeypatch):
    root = class_folders(tmp_path / "root")
    deny_listing(root / "b", monkeypatch)
    return [root]


def build_broken_symlink(tmp_path, monkeypatch):
    root = class_folders(tmp_path / "root")
    (root / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    return [root]


def build_label_conflict(tmp_path, monkeypatch):
    root = class_folders(tmp_path / "root")
    shutil.copy(root / "a" / "0.png", root / "b" / "copy_of_a0.png")
    return [root]


def build_no_label_column(tmp_path, monkeypatch):
    return [manifest(tmp_path, "c1,img/0.png\nc2,img/1.png\n", header="case_id,image")]


def build_header_only(tmp_path, monkeypatch):
    return [manifest(tmp_path, "")]


def build_duplicate_ids(tmp_path, monkeypatch):
    return [manifest(tmp_path, "c1,img/0.png,0\nc1,img/1.png,1\nc2,img/2.png,1\n")]


def build_nan_label(tmp_path, monkeypatch):
    return [manifest(tmp_path, "c1,img/0.png,0\nc2,img/1.png,nan\nc3,img/2.png,1\n")]


def build_stray_label(tmp_path, monkeypatch):
    good_png(tmp_path / "img" / "stray.png", 77)
    rows = "".join(f"c{i},img/{i % 6}.png,{i % 6 % 2}\n" for i in range(200)) + "c200,img/stray.png,7\n"
    return [manifest(tmp_path, rows)]


def build_latin1_csv(tmp_path, monkeypatch):
    path = tmp_path / "latin1.csv"
    path.write_bytes("case_id,image,label\nc1,r\xe9sum\xe9.png,0\n".encode("latin-1"))
    return [path]


def build_binary_csv(tmp_path, monkeypatch):
    path = tmp_path / "binary.csv"
    path.write_bytes(bytes(np.random.default_rng(0).integers(128, 256, 512, dtype=np.uint8)))
    return [path]


DATA_CHECK_CASES = [
    # id, builder, extra arguments, exit status, line (regex) on stderr or in the report
    ("decompression bomb", build_bomb, [], 1, r"huge\.png: image too large \(400000000 pixels, over PIL's decompression-bomb limit"),
    ("decompression bomb, allowed", build_bomb, ["--allow-unreadable"], 0, r"huge\.png: image too large"),
    ("decompression bomb warning", build_bomb_warning, [], 1, r"big\.png: image too large \(40x40 pixels"),
    ("class folder without read permission", build_unlistable, [], 2, r"error: .*root/b: cannot list folder \(Permission denied\)"),
    ("broken symlink", build_broken_symlink, [], 1, r"gone\.png: broken symlink"),
    ("identical images under two labels", build_label_conflict, [], 1, r"1 exact-duplicate group\(s\) have conflicting labels"),
    ("identical images under two labels, allowed", build_label_conflict, ["--allow-label-conflicts"], 0, r"conflicting labels: a/0 = b/copy_of_a0 \(a / b\)"),
    ("manifest without the label column", build_no_label_column, [], 2, r"m\.csv: missing column\(s\) \['label'\]"),
    ("header-only manifest", build_header_only, [], 2, r"m\.csv: no cases \(a header line but no rows\)"),
    ("duplicate case ids", build_duplicate_ids, [], 2, r"m\.csv: duplicate case id\(s\) in column 'case_id': 'c1' \(lines 2, 3\)"),
    ("nan label", build_nan_label, [], 1, r"m\.csv line 3 \(case c2\) field 'label': missing label 'nan'"),
    ("stray label 7 among 0/1", build_stray_label, [], 1, r"rare class\(es\), a stray label\?: label '2' \(0 of 201\), .*"),
    ("stray label, allowed", build_stray_label, ["--allow-rare-classes"], 0, r"label '7': 1 of 201"),
    ("latin-1 CSV", build_latin1_csv, [], 2, r"latin1\.csv: unreadable CSV: not UTF-8 text \(found byte 0xe9\); save it as UTF-8"),
    ("binary file named .csv", build_binary_csv, [], 2, r"binary\.csv: unreadable CSV"),
]


@pytest.mark.usefixtures("restore_permissions")
@pytest.mark.parametrize("build, extra, status, line", [row[1:] for row in DATA_CHECK_CASES], ids=[row[0] for row in DATA_CHECK_CASES])
def test_data_check_bad_input_table(build, extra, status, line, tmp_path, monkeypatch, capsys):
    from dualfuse.cli import main

    (source,) = build(tmp_path, monkeypatch)
    report = tmp_path / "report.json"
    code = main(["data", "check", str(source), "--workers", "1", "--json", str(report), *extra])
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err + printed.out
    assert code == status, printed.err
    if status == 2:
        assert printed.err.count("\n") == 1, printed.err  # one line, naming the file or folder
        assert re.search(line, printed.err), printed.err
    else:
        found = printed.err + "\n".join(u["reason"] for u in json.loads(report.read_text())["unreadable"])
        found += "\n" + "\n".join(f"{r['task']} {r['class']!r}: {r['count']} of {r['total']}" for r in json.loads(report.read_text())["rare_classes"])
        found += "\n" + "\n".join(f"conflicting labels: {' = '.join(g['images'])} ({' / '.join(g['classes'])})"
                                 for g in json.loads(report.read_text())["exact_duplicates"] if g["label_conflict"])
        assert re.search(line, found), found


def test_suffix_twins_stay_two_cases(tmp_path):
    """`x.png` and `x.jpg` in one class folder: both keep their suffix; every other id is unchanged."""
    root = class_folders(tmp_path / "root")
    good_png(root / "a" / "twin.png", 50)
    Image.fromarray(np.random.default_rng(51).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "a" / "twin.jpg")
    ids = [r.case_id for r in ImageFolderDataset(root).records]
    assert len(ids) == len(set(ids)) == 10
    assert {"a/twin.png", "a/twin.jpg", "a/0", "b/3"} <= set(ids)


# --- the same inputs through train's data module and predict's opener --------------------------------
def source_config(path: Path, **kwargs):
    from dualfuse.config import DataConfig, SourceConfig

    fmt = "manifest" if path.suffix == ".csv" else "folder"
    return DataConfig(sources={"x": SourceConfig(format=fmt, path=str(path), **kwargs)}, num_workers=0)


def build_single_image_class(tmp_path, monkeypatch):
    root = class_folders(tmp_path / "root", per_class=30)
    good_png(root / "c" / "only.png", 999)
    return [root]


TRAIN_CASES = [
    ("decompression bomb", build_bomb, {}, r"huge\.png: image too large"),
    ("class folder without read permission", build_unlistable, {}, r"root/b: cannot list folder \(Permission denied\)"),
    ("broken symlink", build_broken_symlink, {}, r"gone\.png: broken symlink"),
    ("manifest without the label column", build_no_label_column, {}, r"m\.csv: missing column\(s\) \['label'\]"),
    ("nan label", build_nan_label, {}, r"m\.csv line 3 \(case c2\) field 'label': missing label 'nan'"),
    ("stray label 7, no classes configured", build_stray_label, {},
     r"data\.sources\.x: rare class\(es\) label '2' \(0 of 201 cases\), .*a stray label\? .*data\.sources\.x\.classes"),
    ("stray label 7, classes configured", build_stray_label, {"classes": ["0", "1"]},
     r"m\.csv line 202 \(case c200\) field 'label': label '7' not in classes \['0', '1'\]"),
    ("class with a single image", build_single_image_class, {},
     r"data\.sources\.x: class 'c': only 1 case\(s\), but carving train/val/test puts it in 3 splits"),
    ("latin-1 CSV", build_latin1_csv, {}, r"latin1\.csv: unreadable CSV: not UTF-8 text"),
]


@pytest.mark.usefixtures("restore_permissions")
@pytest.mark.parametrize("build, source_kwargs, line", [row[1:] for row in TRAIN_CASES], ids=[row[0] for row in TRAIN_CASES])
def test_train_data_bad_input_table(build, source_kwargs, line, tmp_path, monkeypatch):
    from dualfuse.data.datamodule import ClassificationDataModule

    (source,) = build(tmp_path, monkeypatch)
    with pytest.raises(DataError) as error:
        ClassificationDataModule(source_config(source, **source_kwargs), seed=0).setup()
    assert "\n" not in str(error.value) and re.search(line, str(error.value)), str(error.value)


def test_train_skip_bad_skips_and_lists(tmp_path):
    """`data.skip_bad: true` reaches the source: a bomb, a truncated and a broken-link file are
    dropped, listed in `skipped` and summed up in one warning; training sees only good cases."""
    from dualfuse.data.datamodule import ClassificationDataModule

    root = class_folders(tmp_path / "root", per_class=10)
    fake_bomb_png(root / "a" / "huge.png")
    whole = (root / "b" / "0.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    config = source_config(root)
    config.skip_bad = True
    with pytest.warns(UserWarning, match=r"^data\.sources\.x: skipped 3 bad case\(s\) \(data\.skip_bad\)") as caught:
        data = ClassificationDataModule(config, seed=0)
    assert len(caught) == 1
    assert sorted(Path(p).name for p, _ in data.skipped["x"]) == ["cut.png", "gone.png", "huge.png"]
    data.setup()
    assert sum(len(data.datasets[s]) for s in ("train", "val", "test")) == 20


# --- predict / explain inputs ------------------------------------------------------------------------
def test_open_inputs_bad_files_one_line_each(tmp_path, monkeypatch):
    from dualfuse.data.open import open_inputs

    cases = {
        "2-frame DICOM": (two_frame_dicom(tmp_path / "two.dcm"), r"two\.dcm: multi-frame image \(2 frames\); expected one 2D image"),
        "RT dose": (rt_dose(tmp_path / "dose.dcm"),
                    r"dose\.dcm: not an image \(SOP class RT Dose Storage, modality RTDOSE\); expected a 2D image"),
        "decompression bomb": (fake_bomb_png(tmp_path / "huge.png"), r"huge\.png: image too large"),
        "latin-1 CSV": (build_latin1_csv(tmp_path, monkeypatch)[0], r"latin1\.csv: unreadable CSV"),
    }
    header = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    private = {str(header.get(tag)) for tag in ("PatientName", "PatientID", "StudyDate", "InstitutionName") if header.get(tag)}
    for name, (path, line) in cases.items():
        with pytest.raises(DataError) as error:
            dataset = open_inputs([str(path)], ["image"])
            dataset[0]
        message = str(error.value)
        assert "\n" not in message and re.search(line, message), (name, message)
        assert not [value for value in private if value in message], (name, message)  # DICOM privacy


def test_open_inputs_several_modalities_need_a_manifest(tmp_path):
    from dualfuse.data.open import open_inputs

    with pytest.raises(ValueError, match=r"^this model takes 2 modalities \['ct', 'mri'\]: give a CSV manifest with one column per modality$"):
        open_inputs([str(good_png(tmp_path / "a.png"))], ["ct", "mri"])


def test_open_inputs_skip_bad_lists_and_keeps_the_rest(tmp_path):
    from dualfuse.data.open import open_inputs

    folder = tmp_path / "scans"
    for k in range(3):
        good_png(folder / f"{k}.png", k)
    fake_bomb_png(folder / "huge.png")
    two_frame_dicom(folder / "two.dcm")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError):
        open_inputs([str(folder)], ["image"])[0]  # the first bad file, without skip_bad
    dataset = open_inputs([str(folder)], ["image"], skip_bad=True)
    assert [r.case_id for r in dataset.records] == ["0.png", "1.png", "2.png"]
    assert sorted(Path(p).name for p, _ in dataset.skipped) == ["gone.png", "huge.png", "two.dcm"]


def test_open_inputs_ids_are_relative_and_patient_ids_empty(tmp_path, data_root):
    """Paths can identify patients: no absolute path becomes an id, no path a patient id."""
    from dualfuse.data.open import open_inputs

    folder = tmp_path / "ward 7" / "scans"
    good_png(folder / "sub" / "a.png", 1)
    good_png(folder / "b.png", 2)
    single = good_png(tmp_path / "elsewhere" / "c.png", 3)
    dataset = open_inputs([str(folder), str(single)], ["image"])
    assert [r.case_id for r in dataset.records] == ["b.png", "sub/a.png", "c.png"]
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s["patient_id"] for s in samples] == ["", "", ""]
    assert not any(str(tmp_path) in s["case_id"] + s["patient_id"] for s in samples)
    npz = open_inputs([str(data_root / "medmnist" / "breastmnist.npz")], ["image"], split="val")
    assert npz[0]["patient_id"] == "" and "label" not in npz[0] and npz.classes == {}
    good_png(tmp_path / "other" / "b.png", 4)
    with pytest.raises(DataError, match=r"other/b\.png: case id 'b\.png' is also the id of .*scans/b\.png"):
        open_inputs([str(folder), str(tmp_path / "other")], ["image"])


@pytest.mark.usefixtures("restore_permissions")
def test_open_inputs_unlistable_folder_is_one_line(tmp_path, monkeypatch):
    from dualfuse.data.open import open_inputs

    good_png(tmp_path / "scans" / "a.png", 1)
    good_png(tmp_path / "scans" / "locked" / "b.png", 2)
    deny_listing(tmp_path / "scans" / "locked", monkeypatch)
    with pytest.raises(DataError, match=r"scans/locked: cannot list folder \(Permission denied\)$"):
        open_inputs([str(tmp_path / "scans")], ["image"])
