"""Every source on real data: the shipped datasets and pydicom's bundled DICOM files."""
from __future__ import annotations

import sys
import types

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from dualfuse.data.base import CaseDataset, DataError
from dualfuse.data.paths import data_root
from dualfuse.data.sources import (
    WINDOW_PRESETS,
    DicomDataset,
    FileReader,
    ImageFolderDataset,
    ManifestDataset,
    MedMNISTDataset,
    NiftiDataset,
    read_dicom,
    read_pil,
)
from dualfuse.data.sources.dicom import apply_window
from dualfuse.data.sources.medmnist import download_medmnist

BRAIN_CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
# Counted with `find brain-tumor-mri/<split>/<class> -type f | wc -l`.
BRAIN_COUNTS = {
    "train": {"glioma": 1321, "meningioma": 1333, "notumor": 1402, "pituitary": 1445},
    "test": {"glioma": 299, "meningioma": 198, "notumor": 300, "pituitary": 295},
}
LUNG_COUNTS = {"Benign": 103, "Malignant": 547, "Normal": 405}
BRATS_SEQUENCES = ["t1c", "t1n", "t2f", "t2w"]
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientAddress")

pytestmark = pytest.mark.realdata


# --- MedMNIST ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, counts, test_classes",
    [
        ("pneumoniamnist", {"train": 4690, "val": 524, "test": 624}, {"0": 234, "1": 390}),
        ("breastmnist", {"train": 546, "val": 78, "test": 156}, {"0": 42, "1": 114}),
    ],
)
def test_medmnist_splits_counts_and_labels(data_root, name, counts, test_classes):
    path = data_root / "medmnist" / f"{name}.npz"
    full = MedMNISTDataset(path)
    assert full.splits == counts
    assert full.labels().shape == (sum(counts.values()),)
    for split, n in counts.items():
        part = MedMNISTDataset(path, split=split)
        assert len(part) == n and len(full.split(split)) == n
        assert {r.split for r in part.records} == {split}
    assert MedMNISTDataset(path, split="test").class_counts() == {"label": test_classes}

    sample = full[0]
    assert sample["image"].shape == (1, 28, 28) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["label"].dtype == torch.long and sample["label"].shape == ()
    assert sample["case_id"] == sample["patient_id"] == "train_0"
    assert MedMNISTDataset(path, split="val", channels=3)[0]["image"].shape == (3, 28, 28)


def test_medmnist_rgb_npz_and_flat_labels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, n).astype(np.uint8)
    arrays["train_labels"][0] = 2
    np.savez(tmp_path / "tiny.npz", **arrays)
    ds = MedMNISTDataset(tmp_path / "tiny.npz", split="train")
    assert ds[0]["image"].shape == (3, 8, 8)
    assert ds.classes == {"label": ["0", "1", "2"]}
    np.testing.assert_allclose(ds[1]["image"].numpy(), arrays["train_images"][1].transpose(2, 0, 1) / 255.0, atol=1e-6)
    grey = MedMNISTDataset(tmp_path / "tiny.npz", split="train", channels=1)[1]["image"]
    expected = arrays["train_images"][1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    np.testing.assert_allclose(grey[0].numpy(), expected, atol=1e-5)


def test_medmnist_by_name_needs_optional_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)  # import medmnist -> ImportError
    with pytest.raises(ImportError, match=r"pip install dualfuse\[medmnist\]"):
        MedMNISTDataset("pneumoniamnist")


def test_medmnist_class_names_from_package_info(data_root, monkeypatch):
    fake = types.ModuleType("medmnist")
    fake.INFO = {"pneumoniamnist": {"label": {"0": "normal", "1": "pneumonia"}, "python_class": "PneumoniaMNIST"}}
    monkeypatch.setitem(sys.modules, "medmnist", fake)
    ds = MedMNISTDataset(data_root / "medmnist" / "pneumoniamnist.npz", split="test")
    assert ds.classes == {"label": ["normal", "pneumonia"]}
    assert ds.class_counts() == {"label": {"normal": 234, "pneumonia": 390}}


def test_medmnist_download_uses_package_helper(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:
        def __init__(self, split, root, download, size):
            calls.append((split, root, download, size))

    fake = types.ModuleType("medmnist")
    fake.INFO = {"breastmnist": {"label": {"0": "malignant", "1": "normal, benign"}, "python_class": "BreastMNIST"}}
    fake.BreastMNIST = FakeMNIST
    monkeypatch.setitem(sys.modules, "medmnist", fake)
    assert download_medmnist("BreastMNIST", tmp_path, size=64) == tmp_path / "breastmnist_64.npz"
    assert calls == [("test", str(tmp_path), True, 64)]
    with pytest.raises(DataError, match="unknown MedMNIST dataset"):
        download_medmnist("nosuchmnist", tmp_path)


# --- image folders ----------------------------------------------------------------------------
def test_brain_mri_folder_counts_per_class_and_split(data_root):
    ds = ImageFolderDataset(data_root / "brain-tumor-mri")
    assert ds.classes == {"label": BRAIN_CLASSES}
    assert ds.splits == {"train": 5501, "test": 1092}
    assert len(ds) == 6593 and ds.skipped == [] and ds.ignored == []
    for split, counts in BRAIN_COUNTS.items():
        assert ds.split(split).class_counts() == {"label": counts}
        only = ImageFolderDataset(data_root / "brain-tumor-mri", split=split)
        assert only.class_counts() == {"label": counts}


def _first_with_mode(folder, mode):
    return next(p for p in sorted(folder.iterdir()) if Image.open(p).mode == mode)


@pytest.mark.parametrize("channels", [1, 3])
def test_brain_mri_mixed_modes_give_requested_channels(data_root, channels):
    folder = data_root / "brain-tumor-mri" / "testing" / "meningioma"
    grey, rgb = _first_with_mode(folder, "L"), _first_with_mode(folder, "RGB")
    ds = ImageFolderDataset(data_root / "brain-tumor-mri", split="test", channels=channels)
    by_path = {r.images["image"].path: i for i, r in enumerate(ds.records)}
    for path in (grey, rgb):
        sample = ds[by_path[str(path)]]
        assert sample["image"].shape == (channels, 224, 224)
        assert sample["label"].item() == BRAIN_CLASSES.index("meningioma")
        assert 0.0 <= float(sample["image"].min()) < float(sample["image"].max()) <= 1.0
    grey_pixels = np.asarray(Image.open(grey), dtype=np.float32) / 255.0
    np.testing.assert_allclose(read_pil(grey, channels)[0].numpy(), grey_pixels, atol=1e-6)
    native = read_pil(rgb)
    assert native.shape == (3, 224, 224)


def test_lung_ct_folder_without_splits(data_root):
    ds = ImageFolderDataset(data_root / "lung-ct-iqothnccd", channels=1)
    assert ds.class_counts() == {"label": LUNG_COUNTS}
    assert ds.splits == {"None": 1055}
    assert ds[0]["image"].shape[0] == 1


def test_pil_modes_and_exif(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    assert read_pil(tmp_path / "rotated.jpg").shape == (3, 4, 6)

    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    palette = read_pil(tmp_path / "palette.png")
    expected = np.asarray(Image.open(tmp_path / "palette.png").convert("RGB"), np.float32) / 255.0
    np.testing.assert_allclose(palette.numpy().transpose(1, 2, 0), expected, atol=1e-6)

    rgba = np.dstack([rgb, np.full((6, 4), 255, np.uint8)])
    rgba[0, 0, 3] = 0  # fully transparent pixel composites to black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    alpha = read_pil(tmp_path / "alpha.png", channels=3)
    assert alpha[:, 0, 0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(alpha[:, 1, 1].numpy(), rgb[1, 1] / 255.0, atol=1e-6)

    sixteen = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    np.testing.assert_allclose(read_pil(tmp_path / "sixteen.png")[0].numpy(), sixteen / 65535.0, atol=1e-6)

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_pil(tmp_path / "cmyk.jpg", channels=1).shape == (1, 6, 4)


# --- NIfTI ------------------------------------------------------------------------------------
def test_brats_case_is_a_paired_four_modality_case(data_root):
    folder = data_root / "brats-case"
    central = NiftiDataset.from_folder(folder, BRATS_SEQUENCES)
    assert len(central) == 1 and central.modalities == tuple(BRATS_SEQUENCES)
    assert central.classes == {}
    sample = central[0]
    assert sample["case_id"] == "brats-case#77" and sample["patient_id"] == "brats-case"
    for name in BRATS_SEQUENCES:
        assert sample[name].shape == (1, 240, 240) and sample[name].dtype == torch.float32
        assert 0.0 <= float(sample[name].min()) and float(sample[name].max()) <= 1.0
    record = central.records[0]
    assert {(ref.index, ref.axis) for ref in record.images.values()} == {(77, 2)}

    fg = NiftiDataset.from_folder(folder, BRATS_SEQUENCES, slices=("foreground", 5))
    indices = [r.images["t1c"].index for r in fg.records]
    assert len(indices) > 10 and indices == sorted(indices)
    assert all(len({ref.index for ref in r.images.values()}) == 1 for r in fg.records)
    middle = fg[len(fg) // 2]
    assert {middle[m].shape for m in BRATS_SEQUENCES} == {(1, 240, 240)}
    # brain tissue overlaps across co-registered sequences: foreground masks mostly agree
    masks = [middle[m][0] > 0 for m in BRATS_SEQUENCES]
    union, inter = torch.stack(masks).any(0), torch.stack(masks).all(0)
    assert inter.sum() > 0.9 * union.sum()

    every = NiftiDataset.from_folder(folder, BRATS_SEQUENCES, slices="all", axis=0, channels=3)
    assert len(every) == 240 and every[120]["t2w"].shape == (3, 240, 155)


def test_nifti_slice_in_manifest(data_root, tmp_path):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"case_id,t1c,t2w,grade\nc1,{data_root / 'brats-case' / 't1c.nii.gz'},{data_root / 'brats-case' / 't2w.nii.gz'},high\n")
    ds = ManifestDataset(manifest, modalities=["t1c", "t2w"], tasks=["grade"], classes={"grade": ["low", "high"]})
    sample = ds[0]
    assert sample["t1c"].shape == sample["t2w"].shape == (1, 240, 240)
    assert sample["grade"].item() == 1 and ds.records[0].images["t1c"].index == 77
    reader = FileReader(nifti_slice=30, nifti_axis=1)
    assert ManifestDataset(manifest, ["t1c"], reader=reader).records[0].images["t1c"].index == 30


# --- CSV manifests ----------------------------------------------------------------------------
def test_manifest_with_real_images(data_root, tmp_path):
    folder = data_root / "brain-tumor-mri" / "training"
    rows = ["case_id,patient_id,split,mri,ct,tumour"]
    lung = sorted((data_root / "lung-ct-iqothnccd" / "Normal").iterdir())
    for i, cls in enumerate(BRAIN_CLASSES):
        mri = sorted((folder / cls).iterdir())[0]
        rows.append(f"case{i},p{i // 2},{'train' if i < 3 else 'test'},{mri},{lung[i]},{cls}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = ManifestDataset(tmp_path / "m.csv", modalities=["mri", "ct"], tasks=["tumour"], reader=FileReader(channels=1))
    assert ds.classes == {"tumour": sorted(BRAIN_CLASSES)}
    assert ds.splits == {"train": 3, "test": 1}
    assert [r.patient_id for r in ds.records] == ["p0", "p0", "p1", "p1"]
    sample = ds[2]
    assert sample["mri"].shape == (1, 224, 224) and sample["ct"].shape[0] == 1
    assert sample["tumour"].item() == 2 and sample["case_id"] == "case2"
    assert len(ManifestDataset(tmp_path / "m.csv", ["mri"], ["tumour"], split="test")) == 1


def test_manifest_relative_paths_int_labels_and_dicom(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    ct = get_testdata_file("CT_small.dcm")
    (tmp_path / "ct.dcm").write_bytes(open(ct, "rb").read())
    (tmp_path / "m.csv").write_text("xray,ct,y\na.png,ct.dcm,2\n a.png , ct.dcm ,0\n")
    ds = ManifestDataset(tmp_path / "m.csv", ["xray", "ct"], ["y"], reader=FileReader(window="lung"))
    assert ds.classes == {"y": ["0", "1", "2"]}
    assert ds.labels("y").tolist() == [2, 0]
    assert [r.case_id for r in ds.records] == ["line2", "line3"]
    assert ds[0]["ct"].shape == (1, 128, 128) and ds[1]["xray"].shape == (1, 8, 8)


# --- DICOM ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_dicom_rescale_is_applied(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    expected = ds.pixel_array.astype(np.float64) * slope + intercept
    raw = read_dicom(path, window="raw")
    assert raw.shape == (1, *ds.pixel_array.shape)
    np.testing.assert_allclose(raw[0].numpy(), expected, rtol=1e-6)
    if name == "CT_small.dcm":
        assert intercept == -1024 and float(raw.min()) == float(ds.pixel_array.min()) - 1024


def test_dicom_windowing():
    path = get_testdata_file("CT_small.dcm")
    hu = read_dicom(path, window="raw")[0].numpy()
    center, width = WINDOW_PRESETS["mediastinum"]
    out = read_dicom(path, window="mediastinum")[0].numpy()
    np.testing.assert_allclose(out, np.clip((hu - (center - width / 2)) / width, 0, 1), atol=1e-6)
    assert read_dicom(path, window=(center, width)).equal(read_dicom(path, window="mediastinum"))
    minmax = read_dicom(path, window="minmax")[0].numpy()
    assert minmax.min() == 0.0 and minmax.max() == 1.0
    np.testing.assert_allclose(minmax, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    # MR_small carries its own window (600, 1600): "auto" and "file" use it
    mr = get_testdata_file("MR_small.dcm")
    mr_raw = read_dicom(mr, window="raw")[0].numpy()
    np.testing.assert_allclose(read_dicom(mr, window="file")[0].numpy(), apply_window(mr_raw, 600, 1600), atol=1e-6)
    assert read_dicom(mr).equal(read_dicom(mr, window="file"))
    with pytest.raises(DataError, match="CT_small.dcm: DICOM has no WindowCenter"):
        read_dicom(path, window="file")
    with pytest.raises(ValueError, match="unknown window"):
        read_dicom(path, window="kidney")


def test_dicom_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    original = read_dicom(get_testdata_file("CT_small.dcm"), window="lung")
    inverted = read_dicom(tmp_path / "mono1.dcm", window="lung")
    torch.testing.assert_close(inverted, 1.0 - original)


def test_dicom_records_carry_no_patient_identifiers(tmp_path):
    files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    identifiers = set()
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(header.get(tag)) for tag in IDENTIFYING if header.get(tag)}
    identifiers |= {part for value in list(identifiers) for part in value.split("^") if len(part) > 2}
    assert "1CT1" in identifiers and "CompressedSamples" in identifiers

    ds = DicomDataset(files, window="lung")
    assert [r.case_id for r in ds.records] == ["CT_small", "MR_small"]
    text = repr(ds.records) + repr(ds) + repr([ds[i]["case_id"] + ds[i]["patient_id"] for i in range(len(ds))])
    assert not [value for value in identifiers if value in text]

    bad = pydicom.dcmread(files[0])
    del bad.PixelData
    bad.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(DataError) as error:
        read_dicom(tmp_path / "nopixels.dcm")
    assert not [value for value in identifiers if value in str(error.value)]


def _multiframe_image(tmp_path):
    """pydicom's 15-frame RT dose grid relabelled as a multi-frame secondary-capture image (an RT
    dose itself is refused: it is not an image)."""
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # multi-frame grey word SC
    ds.Modality = "OT"
    ds.save_as(tmp_path / "stack.dcm")
    return tmp_path / "stack.dcm"


def test_dicom_multiframe_each_frame_or_one(tmp_path):
    path = _multiframe_image(tmp_path)
    frames = pydicom.dcmread(path).pixel_array
    every = DicomDataset(path, window="minmax")
    assert len(every) == frames.shape[0] == 15
    assert every.records[3].case_id == "stack#3" and every.records[3].patient_id == "stack"
    third = every[3]["image"][0].numpy()
    expected = frames[3].astype(np.float64)
    np.testing.assert_allclose(third, (expected - expected.min()) / (expected.max() - expected.min()), atol=1e-6)
    one = DicomDataset(path, frames=5, window="minmax")
    assert len(one) == 1 and one[0]["image"].equal(every[5]["image"])
    with pytest.raises(DataError, match="stack.dcm: frame 99 out of range"):
        DicomDataset(path, frames=99)[0]


def test_dicom_folder_case_ids_are_relative_paths(tmp_path):
    (tmp_path / "study" / "a").mkdir(parents=True)
    (tmp_path / "study" / "a" / "ct.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    ds = DicomDataset(tmp_path / "study", channels=3)
    assert [r.case_id for r in ds.records] == ["a/ct"]
    assert ds[0]["image"].shape == (3, 128, 128)


# --- shared dataset API -----------------------------------------------------------------------
def test_dataset_views_and_transforms(data_root):
    path = data_root / "medmnist" / "breastmnist.npz"
    ds = MedMNISTDataset(path, split="val", transform=lambda image, modality: image * 2)
    assert float(ds[0]["image"].max()) > 1.0
    per_modality = MedMNISTDataset(path, split="val", transform={"image": lambda image: image[:, :14]})
    assert per_modality[0]["image"].shape == (1, 14, 28)
    sub = per_modality.subset([3, 1])
    assert isinstance(sub, CaseDataset) and [r.case_id for r in sub.records] == ["val_3", "val_1"]
    assert len(per_modality) == 78 and per_modality.labels().shape == (78,)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 28, 28) and batch["label"].dtype == torch.long


def test_data_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALFUSE_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.setenv("DUALFUSE_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="DUALFUSE_DATA"):
        data_root()
    monkeypatch.delenv("DUALFUSE_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="DUALFUSE_DATA"):
        data_root()
