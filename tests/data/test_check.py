"""`dualfuse data check`: planted problems are found, real datasets give the expected findings."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from dualfuse.cli import main
from dualfuse.data.base import CaseDataset, CaseRecord, ImageRef
from dualfuse.data.check import check_dataset, check_source, check_summary, check_tables, near_duplicate_pairs


def _noise(path, seed, size=(48, 40)):
    """A random image: its perceptual hash is far from every other seed's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def planted(tmp_path):
    """train/test class folders with one exact duplicate and one near duplicate across splits, one
    file that is not an image at all and one truncated PNG."""
    root = tmp_path / "planted"
    seed = 0
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for k in range(4):
                _noise(root / split / cls / f"{k}.png", seed := seed + 1)
    shutil.copy(root / "train" / "a" / "0.png", root / "test" / "a" / "exact_copy.png")
    brighter = np.asarray(Image.open(root / "train" / "b" / "1.png")).astype(int) + 3
    Image.fromarray(np.clip(brighter, 0, 255).astype(np.uint8)).save(root / "test" / "b" / "brighter_copy.png")
    (root / "test" / "b" / "broken.png").write_bytes(b"this is not an image")
    whole = (root / "train" / "b" / "0.png").read_bytes()
    (root / "train" / "b" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return root


def _run(capsys, *args):
    code = main(["data", "check", *map(str, args)])
    return code, capsys.readouterr()


def test_planted_leak_and_unreadable_fail(planted, tmp_path, capsys):
    out = tmp_path / "report.json"
    code, printed = _run(capsys, planted, "--json", out, "--workers", 2)
    assert code == 1
    assert "exact-duplicate group(s) span more than one split" in printed.err
    assert "2 unreadable image(s)" in printed.err
    report = json.loads(out.read_text())
    unreadable = " ".join(u["reason"] for u in report["unreadable"])
    assert "broken.png" in unreadable and "truncated.png" in unreadable
    [group] = report["exact_duplicates"]
    assert sorted(group["images"]) == ["test/a/exact_copy", "train/a/0"] and group["cross_split"]
    assert not group["label_conflict"]
    assert report["num_cases"] == 18 and report["counts"]["test"]["label"] == {"a": 5, "b": 5}
    near = {(p["a"], p["b"]) for p in report["near_cross_split"]}
    assert near == {("train/b/1", "test/b/brighter_copy")} or near == {("test/b/brighter_copy", "train/b/1")}
    assert report["near_leaked"] == {"test": 1, "train": 1}
    assert report["modes"] == {"L": 18} and report["sizes"] == {"40x48": 18}


def test_allow_flags_and_fail_on_near(planted, capsys):
    assert _run(capsys, planted, "--allow-leakage", "--allow-unreadable")[0] == 0
    code, printed = _run(capsys, planted, "--allow-leakage", "--allow-unreadable", "--fail-on-near")
    assert code == 1 and "near-duplicate pair(s) span more than one split" in printed.err
    assert _run(capsys, planted, "--allow-leakage")[0] == 1  # still unreadable


def test_rich_rendering_lists_findings(planted):
    report = check_source(planted)
    console = Console(file=io.StringIO(), width=250)
    console.print(check_summary(report))
    for table in check_tables(report):  # pure: the tables are built here and printed by the caller
        console.print(table)
    text = console.file.getvalue()
    for expected in ("cases per split and class", "exact-duplicate groups, across splits", "test/a/exact_copy", "broken.png"):
        assert expected in text


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, printed = _run(capsys, tmp_path / "missing")
    assert code == 2
    assert printed.err.count("\n") == 1 and "missing: not found" in printed.err and "Traceback" not in printed.err
    (tmp_path / "notes.txt").write_text("x")
    code, printed = _run(capsys, tmp_path / "notes.txt")
    assert code == 2 and "--format" in printed.err


def test_near_duplicate_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (40, 3)).astype(np.uint64)
    hashes = np.concatenate([base, base ^ flips[:, 0], base ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]])
    found = {(int(i), int(j), int(d)) for i, j, d in near_duplicate_pairs(hashes, threshold=2)}
    expected = {
        (i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 2
    }
    assert found == expected and len(found) >= 40
    assert near_duplicate_pairs([], 4).shape == (0, 3)


class _TensorDataset(CaseDataset):
    """In-memory images keyed by ref path: a source that is neither a file nor an npz."""

    def __init__(self, images, records, **kwargs):
        self.images = images
        super().__init__(records, ("ct", "mri"), {"label": ["no", "yes"]}, **kwargs)

    def probe(self, ref):
        pass

    def read_image(self, ref):
        return self.images[ref.path]


def test_patient_overlap_and_multimodal_dataset():
    generator = torch.Generator().manual_seed(0)
    images = {f"{p}{m}": torch.rand(1, 20, 30, generator=generator) for p in range(4) for m in ("ct", "mri")}
    records = [
        CaseRecord(f"case{p}", {"ct": ImageRef(f"{p}ct"), "mri": ImageRef(f"{p}mri")}, {"label": p % 2}, f"pat{p // 2}", split)
        for p, split in enumerate(["train", "test", "train", "train"])
    ]
    report = check_dataset(_TensorDataset(images, records), workers=1)
    assert report.patient_overlap == {"pat0": ["test", "train"]}
    assert report.num_images == 8 and report.sizes == {"30x20": 8} and report.modes == {"1ch": 8}
    assert report.problems() == ["1 patient(s) appear in more than one split"]
    assert report.problems(allow_leakage=True) == []
    json.dumps(report.to_dict())


def test_manifest_source(planted, tmp_path):
    manifest = tmp_path / "cases.csv"
    manifest.write_text(
        "case_id,image,label,patient_id,split\n"
        f"c1,{planted}/train/a/0.png,a,p1,train\n"
        f"c2,{planted}/test/a/1.png,a,p1,test\n"
        f"c3,{planted}/test/b/2.png,b,p2,test\n"
        "c4,gone.png,b,p3,test\n"
    )
    report = check_source(manifest)
    assert report.patient_overlap == {"p1": ["test", "train"]}
    assert len(report.unreadable) == 1 and "gone.png" in report.unreadable[0]["reason"]


@pytest.mark.realdata
def test_brain_mri_has_no_exact_cross_split_duplicates(data_root, tmp_path, capsys):
    out = tmp_path / "brain.json"
    code, printed = _run(capsys, data_root / "brain-tumor-mri", "--json", out, "--workers", 2)
    report = json.loads(out.read_text())
    assert code == 0, printed.err
    assert report["num_cases"] == 6593 and not report["unreadable"]
    assert sum(report["counts"]["train"]["label"].values()) == 5501
    assert sum(report["counts"]["test"]["label"].values()) == 1092
    assert not [g for g in report["exact_duplicates"] if g["cross_split"]]
    assert report["modes"].keys() == {"L", "RGB"}
    # Byte-identical copies were removed, but re-encoded copies of the same slices remain:
    assert report["near_pairs"]["test|train"] > 0 and report["near_leaked"]["test"] > 0
    print("brain MRI near-duplicate pairs:", report["near_pairs"], "leaked images:", report["near_leaked"])


@pytest.mark.realdata
def test_lung_ct_has_near_duplicate_clusters(data_root):
    report = check_source(data_root / "lung-ct-iqothnccd", workers=2)
    assert report.num_cases == 1055 and not report.unreadable and not report.exact_duplicates
    sizes = sorted(len(c["images"]) for c in report.near_clusters)
    assert len(sizes) >= 50 and sizes[-1] >= 10  # neighbouring slices of one patient
    assert report.problems() == []  # no splits, so nothing can leak


@pytest.mark.realdata
def test_breastmnist_npz_cross_split_duplicate(data_root):
    report = check_source(data_root / "medmnist" / "breastmnist.npz")
    assert report.modes == {"L": 780} and report.sizes == {"28x28": 780}
    cross = report.cross_split_exact
    assert len(cross) == 1 and cross[0]["label_conflict"]  # same pixels, different labels, train vs test
    assert report.problems() == ["1 exact-duplicate group(s) span more than one split",
                                 "1 exact-duplicate group(s) have conflicting labels"]
    assert report.problems(allow_leakage=True, allow_label_conflicts=True) == []
