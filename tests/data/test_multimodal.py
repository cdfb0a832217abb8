"""Zip mode: brain MRI (folders) zipped with PneumoniaMNIST (npz), re-paired per epoch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dualfuse.data.multimodal import PartnerDataset, ZipDataset, partner_index
from dualfuse.data.sources import ImageFolderDataset, MedMNISTDataset, NiftiDataset

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def sources(data_root):
    brain = ImageFolderDataset(data_root / "brain-tumor-mri", split="test", channels=1)
    xray = MedMNISTDataset(data_root / "medmnist" / "pneumoniamnist.npz", split="test")
    assert (len(brain), len(xray)) == (1092, 624)
    return brain, xray


def test_zip_samples_take_each_label_from_its_own_dataset(sources):
    brain, xray = sources
    zipped = ZipDataset({"mri": brain, "xray": xray}, seed=7)
    assert len(zipped) == 624
    assert zipped.modalities == ("mri", "xray") and zipped.tasks == ("mri_label", "xray_label")
    assert zipped.classes == {"mri_label": brain.classes["label"], "xray_label": xray.classes["label"]}
    for i in (0, 5, 623):
        sample = zipped[i]
        b, x = int(zipped.indices["mri"][i]), int(zipped.indices["xray"][i])
        assert sample["mri_label"].item() == brain.records[b].labels["label"]
        assert sample["xray_label"].item() == xray.records[x].labels["label"]
        assert sample["mri"].equal(brain[b]["image"]) and sample["xray"].equal(xray[x]["image"])
        assert sample["mri"].shape == (1, 224, 224) and sample["xray"].shape == (1, 28, 28)
        assert sample["case_id"] == f"mri:{brain.records[b].case_id}|xray:{xray.records[x].case_id}"
    np.testing.assert_array_equal(zipped.labels("xray_label"), xray.labels()[zipped.indices["xray"]])
    batch = next(iter(torch.utils.data.DataLoader(zipped, batch_size=3)))
    assert batch["mri"].shape == (3, 1, 224, 224) and batch["xray_label"].shape == (3,)


def test_zip_repairs_each_epoch_reproducibly(sources):
    brain, xray = sources
    a = ZipDataset({"mri": brain, "xray": xray}, seed=1)
    b = ZipDataset({"mri": brain, "xray": xray}, seed=1)
    other_seed = ZipDataset({"mri": brain, "xray": xray}, seed=2)
    epoch0 = {k: v.copy() for k, v in a.indices.items()}
    a.set_epoch(1)
    assert not np.array_equal(a.indices["mri"], epoch0["mri"])
    b.set_epoch(1)
    for name in ("mri", "xray"):
        np.testing.assert_array_equal(a.indices[name], b.indices[name])
    assert not np.array_equal(other_seed.indices["mri"], epoch0["mri"])
    a.set_epoch(0)
    np.testing.assert_array_equal(a.indices["mri"], epoch0["mri"])
    # "min": every pair uses distinct images of both datasets
    assert len(set(a.indices["mri"].tolist())) == 624 and sorted(a.indices["xray"].tolist()) == list(range(624))


def test_zip_max_length_resamples_the_shorter_dataset(sources):
    brain, xray = sources
    zipped = ZipDataset({"mri": brain, "xray": xray}, length="max", seed=0)
    assert len(zipped) == 1092
    assert sorted(zipped.indices["mri"].tolist()) == list(range(1092))
    assert set(zipped.indices["xray"].tolist()) == set(range(624))  # every x-ray at least once
    assert zipped.indices["xray"].max() < 624


def test_zip_task_names_and_validation(sources, data_root):
    brain, xray = sources
    zipped = ZipDataset({"mri": brain, "xray": xray}, tasks={"mri": "tumour", "xray": "pneumonia"})
    assert set(zipped[0]) == {"mri", "xray", "tumour", "pneumonia", "case_id", "patient_id"}
    with pytest.raises(ValueError, match="distinct sample keys"):
        ZipDataset({"mri": brain, "xray": xray}, tasks={"mri": "xray"})
    with pytest.raises(ValueError, match="at least two"):
        ZipDataset({"mri": brain})
    with pytest.raises(ValueError, match="length must be"):
        ZipDataset({"mri": brain, "xray": xray}, length="mean")
    brats = NiftiDataset.from_folder(data_root / "brats-case", ["t1c", "t2w"])
    with pytest.raises(ValueError, match="one modality and one task"):
        ZipDataset({"mri": brain, "brats": brats})
    with pytest.raises(KeyError, match="unknown task"):
        zipped.labels("mri_label")


def test_partner_dataset_holds_each_image_once_beside_k_partners(sources):
    brain, xray = sources
    mri_cases, xray_pool = brain.subset(range(4)), xray.subset(range(50))
    dataset = PartnerDataset({"mri": mri_cases}, {"xray": xray_pool}, partners=3, seed=5)
    assert len(dataset) == 4 and dataset.modalities == ("xray", "mri") and dataset.tasks == ("xray_label", "mri_label")
    sample = dataset[2]
    assert sample["case_id"] == f"mri:{brain.records[2].case_id}" and dataset.case_id(2) == sample["case_id"]
    assert sample["mri"].shape == (3, 1, 224, 224) and sample["xray"].shape == (3, 1, 28, 28)
    assert all(sample["mri"][k].equal(brain[2]["image"]) for k in range(3))
    rows = dataset.partner_rows(2)["xray"]
    assert rows == [partner_index(5, sample["case_id"], "xray", k, 50) for k in range(3)]
    assert all(sample["xray"][k].equal(xray_pool[r]["image"]) for k, r in enumerate(rows))
    assert dataset.partner_ids(2) == {"xray": [xray_pool.records[r].case_id for r in rows]}
    assert sample["mri_label"].item() == brain.records[2].labels["label"] and sample["xray_label"].item() == -1
    np.testing.assert_array_equal(dataset.labels("mri_label"), brain.labels()[:4])
    # a case's partners depend on (seed, case, k) only: alone, among other cases, or with more partners
    alone = PartnerDataset({"mri": brain.subset([2])}, {"xray": xray_pool}, partners=5, seed=5)
    assert alone.partner_rows(0)["xray"][:3] == rows
    assert PartnerDataset({"mri": mri_cases}, {"xray": xray_pool}, partners=3, seed=6).partner_rows(2)["xray"] != rows
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["xray"].shape == (4, 3, 1, 28, 28) and batch["xray_label"].tolist() == [-1] * 4
    with pytest.raises(ValueError, match="no partner images of modality 'xray'"):
        PartnerDataset({"mri": mri_cases}, {}, partners=3, modalities=["mri", "xray"])
    with pytest.raises(ValueError, match="partners must be at least 1"):
        PartnerDataset({"mri": mri_cases}, {"xray": xray_pool}, partners=0)
    with pytest.raises(ValueError, match="not one of the model's"):
        PartnerDataset({"ct": mri_cases}, {"xray": xray_pool}, partners=1, modalities=["mri", "xray"])
