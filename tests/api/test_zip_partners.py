"""Zip mode: a DRIFA-Net predicts each image beside K partner images drawn from the training split and
averages over them (issue 13, item 4). A tiny zip run (32 px, a few dozen cases) trained once."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dualfuse.api import evaluate, load_model, predict, train
from dualfuse.api.loading import DEFAULT_PARTNERS
from dualfuse.cli import main
from dualfuse.config import parse_run_args
from dualfuse.data.splits import load_split
from dualfuse.evaluation.predictions import Predictor, cases_frame, predict_loader
from dualfuse.uncertainty.measures import uncertainty_measures

pytestmark = pytest.mark.realdata

MC = 2  # MC samples evaluate calibrates with (kept tiny: only the cost matters here)


@pytest.fixture(scope="module")
def zip_run(data_root, module_tmp) -> Path:
    """A 2-epoch DRIFA-Net on brain MRI (folders) zipped with PneumoniaMNIST, evaluated with 4 partners.
    A ResNet-10-T trunk (16 M parameters, not RRA-18's 54 M): partners do not depend on the backbone,
    and checkpoint writes dominated this fixture's time."""
    output = module_tmp("zip") / "run"
    sources = {"mri": {"format": "folder", "path": str(data_root / "brain-tumor-mri"), "channels": 1},
               "xray": {"format": "medmnist", "path": str(data_root / "medmnist" / "pneumoniamnist.npz")}}
    config, _ = parse_run_args([
        "--model.name", "drifa_net", "--model.kwargs", json.dumps({"in_chans": 1, "mc_dropout": "head", "backbone": "resnet10t"}),
        "--data.mode", "zip", "--data.sources", json.dumps(sources), "--data.img_size", "32",
        "--data.max_train_cases", "24", "--data.max_eval_cases", "10", "--data.num_workers", "0",
        "--data.batch_size", "8", "--train.epochs", "2", "--train.lr", "3e-3", "--train.progress_bar", "false",
        "--eval.n_bootstrap", "10", "--output", str(output),
    ])
    train(config)
    evaluate(output, mc_samples=MC, partners=4)
    return output


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _probs_by_case(predictions, task: str, modality: str) -> dict[str, np.ndarray]:
    view = predictions.for_task(task, modality)
    return dict(zip(view.case_ids, view.probs(task)))


def test_predictor_keys_name_their_partners():
    assert Predictor(1, 30, 1, 8).key == "1x30p8" and Predictor(5, 0, 1, 1).key == "5x0p1"
    assert Predictor(1, 30).key == "1x30" and Predictor(2, 30, 4).key == "2x30x4"  # unchanged
    for key in ("1x30p8", "5x0p1", "1x30", "2x30x4", "1x0"):
        assert Predictor.from_key(key).key == key
    assert Predictor.from_key("1x30p8") == Predictor(1, 30, 1, 8)
    assert "8 partner images" in Predictor(1, 30, 1, 8).label and "partner" not in Predictor(1, 30).label


def test_evaluate_judges_each_image_once_with_partners(zip_run):
    summary = json.loads((zip_run / "evaluation" / "metrics.json").read_text())
    assert summary["partners"] == 4 and summary["predictor"] == f"1x{MC}p4"
    for task in ("mri_label", "xray_label"):
        assert summary["tasks"][task]["test"]["n"] == 10
    frame = pd.read_csv(zip_run / "evaluation" / "predictions.csv")
    test = frame[frame.split == "test"]
    assert sorted(test.modality.unique()) == ["mri", "xray"]
    for modality, task in (("mri", "mri_label"), ("xray", "xray_label")):
        rows = test[test.modality == modality]
        assert len(rows) == 10 and rows.case_id.is_unique
        assert rows[f"{task}_true"].notna().all() and rows[f"{task}_prob_{'0' if modality == 'xray' else 'glioma'}"].notna().all()
        other = "xray_label" if modality == "mri" else "mri_label"
        assert rows[f"{other}_pred"].isna().all()  # an image is judged on its own task only
    # Partner averaging makes even the softmax stochastic: mutual information is reported.
    assert (test["mri_label_mutual_information"].dropna() > 0).all()
    stored = json.loads((zip_run / "model" / "uncertainty.json").read_text())
    assert set(stored["predictors"]) == {"1x0p1", f"1x{MC}p1", "1x0p4", f"1x{MC}p4"}
    assert stored["default"] == f"1x{MC}p4"


def test_partners_come_only_from_the_training_split(zip_run):
    loaded = load_model(zip_run)
    data = loaded.run.datamodule(loaded.spec)
    split_of = {name: load_split(zip_run / f"split-{name}.csv") for name in ("mri", "xray")}
    pools = data.partner_pools()
    pool_ids = {name: {r.case_id for r in pool.records} for name, pool in pools.items()}
    for name in ("mri", "xray"):
        assert pool_ids[name] and {split_of[name][case] for case in pool_ids[name]} == {"train"}
        # the training data the model saw (max_train_cases), not the whole train split
        assert pool_ids[name] == {r.case_id for r in data.datasets["train"].datasets[name].records}
    for split in ("val", "cal", "test"):
        dataset = data.partner_dataset(split, 6, seed=3)
        assert len(dataset) == 20
        for index in range(len(dataset)):
            case = dataset.case_id(index)
            own = case.split(":", 1)[0]
            partners = dataset.partner_ids(index)
            assert set(partners) == {"mri", "xray"} - {own}
            for other, ids in partners.items():
                assert len(ids) == 6 and all(split_of[other][i] == "train" for i in ids)
    # drawn from (seed, case, k): the same in a dataset of other cases, the first K of K' > K, seed-dependent
    small = data.partner_dataset("test", 2, seed=3)
    big = data.partner_dataset("test", 6, seed=3)
    other_seed = data.partner_dataset("test", 6, seed=4)
    for index in range(len(big)):
        ids = big.partner_ids(index)
        assert {m: v[:2] for m, v in ids.items()} == small.partner_ids(index)
    assert any(big.partner_ids(i) != other_seed.partner_ids(i) for i in range(len(big)))
    sample = big[0]
    assert sample["mri"].shape == (6, 1, 32, 32) and sample["xray"].shape == (6, 1, 32, 32)
    own = big.case_id(0).split(":", 1)[0]
    assert torch.equal(sample[own][0], sample[own][5])  # its own image, once per partner
    assert int(sample[f"{'xray' if own == 'mri' else 'mri'}_label"]) == -1


def test_a_case_does_not_depend_on_batch_size_or_order(zip_run):
    loaded = load_model(zip_run)
    data = loaded.run.datamodule(loaded.spec)
    dataset = data.partner_dataset("test", 3, seed=loaded.seed)
    results = []
    for batch_size, reverse in ((1, False), (7, False), (64, False), (7, True)):
        order = list(range(len(dataset)))[::-1] if reverse else list(range(len(dataset)))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order)
        predictions = predict_loader(loaded.members, loader, loaded.spec, "cpu", mc_samples=MC, seed=loaded.seed)
        assert predictions.partners == 3 and predictions.drawn == Predictor(1, MC, 1, 3)
        results.append({task: _probs_by_case(predictions, task, loaded.spec.modality_of(task))
                        for task in loaded.spec.tasks})
    for other in results[1:]:
        for task, probs in results[0].items():
            assert set(other[task]) == set(probs) and len(probs) == 10
            for case, p in probs.items():
                np.testing.assert_array_equal(other[task][case], p)


def test_partner_spread_shows_in_mutual_information(zip_run):
    loaded = load_model(zip_run)
    data = loaded.run.datamodule(loaded.spec)
    loader = data.partner_dataloader("test", 4, seed=loaded.seed)
    predictions = predict_loader(loaded.members, loader, loaded.spec, "cpu", mc_samples=0, seed=loaded.seed)
    for task in loaded.spec.tasks:
        view = predictions.for_task(task, loaded.spec.modality_of(task))
        spread = view.using(Predictor(1, 0, 1, 4))
        per_partner = spread.sample_probs(task).astype(np.float64)  # (4 partners, N, C)
        assert per_partner.shape[:2] == (4, 10) and spread.stochastic
        assert (per_partner.std(axis=0).max(axis=1) > 0).all()  # every case's partners move it
        mean = per_partner.mean(axis=0)
        entropy = -(mean * np.log(mean)).sum(axis=1)
        expected = -(per_partner * np.log(per_partner)).sum(axis=2).mean(axis=0)
        mutual_information = uncertainty_measures(per_partner)["mutual_information"]
        np.testing.assert_allclose(mutual_information, entropy - expected, rtol=1e-6, atol=1e-12)
        assert (mutual_information > 0).all()
        one = view.using(Predictor(1, 0, 1, 1))  # one partner: no spread, no mutual information
        assert not one.stochastic
        np.testing.assert_array_equal(one.probs(task), per_partner[0])
        frame = cases_frame(predictions.using(Predictor(1, 0, 1, 4)), loaded.spec)  # predictions.csv (float32)
        shown = frame.loc[frame.modality == loaded.spec.modality_of(task), f"{task}_mutual_information"]
        np.testing.assert_allclose(shown, mutual_information, rtol=0.05, atol=5e-7)
        assert (shown > 0).all()
    with pytest.raises(ValueError, match="needs more"):
        predictions.using(Predictor(1, 0, 1, 5))
    with pytest.raises(ValueError, match="needs more"):
        predictions.using(Predictor(1, 0))  # the one-pairing predictor is not what these hold


@pytest.fixture
def xray_images(data_root, tmp_path) -> Path:
    """Five real PneumoniaMNIST test images as PNG files: one dataset, as a single-dataset user has."""
    folder = tmp_path / "xrays"
    folder.mkdir()
    for i, array in enumerate(np.load(data_root / "medmnist" / "pneumoniamnist.npz")["test_images"][:5]):
        Image.fromarray(array).save(folder / f"child{i}.png")
    return folder


def test_predict_images_of_one_modality(zip_run, xray_images, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(zip_run), str(xray_images), "--output", str(out), "--modality", "xray"]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 5 and set(frame.modality) == {"xray"}
    assert sorted(frame.case_id) == [f"child{i}.png" for i in range(5)]
    assert not [c for c in frame.columns if c.startswith("mri_label")]
    assert {"xray_label_prob_0", "xray_label_mutual_information", "xray_label_refer", "xray_label_set"} <= set(frame)
    # calibrated with 4 partners by evaluate: predict uses that predictor's calibration as it is
    stored = json.loads((zip_run / "model" / "uncertainty.json").read_text())
    assert set(stored["predictors"]) == {"1x0p1", f"1x{MC}p1", "1x0p4", f"1x{MC}p4"}
    # batch size changes nothing
    whole = predict(zip_run, [str(xray_images)], tmp_path / "q.csv", modality="xray")
    small = predict(zip_run, [str(xray_images)], tmp_path / "s.csv", modality="xray", batch_size=2)
    pd.testing.assert_frame_equal(small, whole, check_exact=True)
    # which modality a folder of images is cannot be guessed: one line naming --modality
    assert main(["predict", str(zip_run), str(xray_images), "--output", str(tmp_path / "r.csv")]) == 2
    assert "--modality mri|xray" in _one_line_error(capsys)
    assert main(["predict", str(zip_run), str(xray_images), "--output", str(tmp_path / "r.csv"),
                 "--modality", "ct"]) == 2
    assert "--modality 'ct' is not one of this model's modalities (mri, xray)" in _one_line_error(capsys)
    assert main(["predict", str(zip_run), str(xray_images), "--output", str(tmp_path / "r.csv"),
                 "--modality", "xray", "--tta", "3"]) == 2
    assert "--tta cannot be combined" in _one_line_error(capsys)


def test_a_manifest_names_its_modality_and_repeats_evaluate(zip_run, data_root, tmp_path):
    frame = pd.read_csv(zip_run / "evaluation" / "predictions.csv")
    test = frame[(frame.split == "test") & (frame.modality == "mri")].head(4)
    paths = [next((data_root / "brain-tumor-mri").glob(f"{case}.*")) for case in test.case_id]
    manifest = tmp_path / "cases.csv"
    pd.DataFrame({"case_id": test.case_id, "mri": [str(p) for p in paths]}).to_csv(manifest, index=False)
    out = predict(zip_run, [str(manifest)], tmp_path / "p.csv")  # modality from the manifest's column
    assert list(out.case_id) == list(test.case_id) and set(out.modality) == {"mri"}
    columns = [c for c in out.columns if c.startswith("mri_label_prob_")]
    np.testing.assert_allclose(out[columns].to_numpy(), test[columns].to_numpy(), atol=1e-6)


def test_other_partner_counts_get_their_own_calibration(zip_run, xray_images, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(zip_run, run)
    loaded = load_model(run)
    assert loaded.partners == 4  # as calibrated
    one, four, two = Predictor(1, MC, 1, 1), Predictor(1, MC, 1, 4), Predictor(1, MC, 1, 2)
    assert one.key != four.key and loaded.calibrated(one) is not None and loaded.calibrated(four) is not None
    assert loaded.calibrated(one)["xray_label"]["temperature"] != loaded.calibrated(four)["xray_label"]["temperature"]
    assert loaded.calibrated(Predictor(1, MC)) is None  # the one-pairing predictor was never calibrated
    before = json.loads((run / "model" / "uncertainty.json").read_text())["predictors"]
    assert two.key not in before
    with pytest.warns(UserWarning, match="not calibrated yet"):
        frame = predict(run, [str(xray_images)], tmp_path / "p2.csv", modality="xray", partners=2)
    after = json.loads((run / "model" / "uncertainty.json").read_text())["predictors"]
    assert after[two.key]["xray_label"]["predictor"] == two.key
    assert {k: after[k] for k in before} == before  # nobody else's calibration touched
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # K=1 and K=4 are calibrated: no refit, no borrowing
        k1 = predict(run, [str(xray_images)], tmp_path / "p1.csv", modality="xray", partners=1)
        k4 = predict(run, [str(xray_images)], tmp_path / "p4.csv", modality="xray", partners=4)
    assert not np.allclose(k1["xray_label_prob_0"], k4["xray_label_prob_0"], rtol=0, atol=1e-9)
    assert "xray_label_mutual_information" in frame


def test_partners_unavailable_or_misused_fail_in_one_line(zip_run, xray_images, tmp_path, capsys):
    model_only = tmp_path / "copied-model"
    shutil.copytree(zip_run / "model", model_only)  # weights without the run's data: no partners
    out = tmp_path / "p.csv"
    assert main(["predict", str(model_only), str(xray_images), "--output", str(out), "--modality", "xray"]) == 2
    line = _one_line_error(capsys)
    assert "partner images" in line and "pass the run folder" in line and "--partners 0" in line
    assert not out.exists()
    assert main(["evaluate", str(zip_run), "--partners", "2", "--tta", "3"]) == 2
    assert "--tta cannot be combined" in _one_line_error(capsys)
    assert DEFAULT_PARTNERS == 8 and load_model(model_only).partners == 4  # its calibration travelled with it
