"""Grad-CAM on a trained real-data model, the HTML report in headless Chromium, the model card."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from dualfuse.api import RunFolder, evaluate
from dualfuse.api import report as write_report
from dualfuse.cli import main
from dualfuse.data.sources import MedMNISTDataset
from dualfuse.evaluation.model_card import model_card_schema, validate_model_card
from dualfuse.explain.gradcam import class_activation_maps
from dualfuse.models.saved import load_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def breast_run(trained_breast_run, module_tmp):
    """This module's copy of the session's 4-epoch BreastMNIST run (tests/conftest.py)."""
    return shutil.copytree(trained_breast_run[0], module_tmp("report") / "run")


def _model_batch(run: Path, data_root: Path, n: int = 8):
    from dualfuse.data.transforms import build_transforms

    model, spec = load_model(run / "model")
    dataset = MedMNISTDataset(data_root / "medmnist" / "breastmnist.npz", split="test")
    dataset.transform = build_transforms(["image"], train=False, img_size=32, normalize="zscore",
                                         overrides={"image": {"in_chans": 1}})
    return model, torch.stack([dataset[i]["image"] for i in range(n)])


def test_gradcam_on_a_trained_model_has_input_size_is_finite_and_depends_on_class(breast_run, data_root):
    model, x = _model_batch(breast_run, data_root)
    maps = {c: class_activation_maps(model, x, target_class=c)["image"] for c in (0, 1)}
    for cams in maps.values():
        assert cams.shape == (8, 32, 32)
        assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert (maps[0].reshape(8, -1).max(axis=1) > 0).any() and (maps[1].reshape(8, -1).max(axis=1) > 0).any()
    # Explaining "malignant" and "normal/benign" highlights different regions.
    assert np.abs(maps[0] - maps[1]).mean() > 0.05


def _chromium_or_skip():
    if CHROMIUM:
        return CHROMIUM
    message = "Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def report(breast_run, data_root, module_tmp):
    run = module_tmp("with_report") / "run"
    shutil.copytree(breast_run, run)
    evaluate(run, mc_samples=8)
    path = write_report(run, gallery_size=3, max_tsne_points=120)
    return run, path


def test_report_is_self_contained_and_complete(report):
    run, path = report
    html = path.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for heading in ("Metrics with 95% bootstrap confidence intervals", "Calibration", "When to refer",
                    "Most uncertain cases", "Most confidently wrong cases", "t-SNE"):
        assert heading in html
    assert html.count("data:image/png;base64,") >= 6 + 2 * 3  # 6 figures, a gallery of input + Grad-CAM pairs
    figures = {p.name for p in (run / "report").glob("*.png")}
    assert {"label_roc_pr.png", "label_confusion_matrix.png", "label_reliability.png", "label_risk_coverage.png",
            "label_uncertainty_histograms.png", "label_tsne.png"} <= figures
    # The calibration that `evaluate` stored is the one the report shows (not refitted).
    stored = json.loads((run / "model" / "uncertainty.json").read_text())
    assert f"{stored['predictors'][stored['default']]['label']['referral']['threshold']:.3f}" in html
    assert "has not been calibrated" not in html
    # The calibration split and the predictor are named; referral includes ambiguous conformal sets.
    assert "calibrated on the cal split" in html and "MC dropout, 8 samples" in html
    assert "conformal prediction set is empty or holds more than one class" in html
    # What the coverage target achieved is said, not only what was asked.
    fell_short = not stored["predictors"][stored["default"]]["label"]["referral"]["reachable"]
    assert ("split to decide 90% of cases; fewer than that have a one-class conformal set" in html) == fell_short


def test_report_renders_in_headless_chromium_without_errors_or_requests(report, tmp_path):
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    _, path = report
    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.resolve().as_uri(), wait_until="load")
        broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    assert broken == 0
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("L"), dtype=np.float32)
    assert shot.shape[0] > 2000  # the whole page, not one screen
    assert (shot < 200).mean() > 0.05 and shot.std() > 20  # text and figures, not a blank page


def test_model_card_beside_each_checkpoint_validates(report):
    run, _ = report
    schema = model_card_schema()
    for folder in ("model", "checkpoints"):
        card = json.loads((run / folder / "metadata.json").read_text())
        validate_model_card(card)
        assert set(schema["required"]) <= set(card)
    assert card["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert card["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    assert card["network_data_format"]["outputs"]["label"]["channel_def"] == {"0": "malignant", "1": "normal_or_benign"}
    assert card["performance"]["source"] == "evaluate"
    test_auc = card["performance"]["tasks"]["label"]["test"]["roc_auc"]
    assert test_auc["ci_low"] <= test_auc["value"] <= test_auc["ci_high"]
    assert card["uncertainty"]["mc_samples"] == 8
    assert card["calibration"]["label"]["temperature"] > 0
    assert card["calibration"]["label"]["log_temperature_prior_sd"] == 1.0  # how T was fitted, on the card
    stored = json.loads((run / "model" / "uncertainty.json").read_text())
    referral = stored["predictors"][stored["default"]]["label"]["referral"]
    assert card["referral"]["label"]["target_coverage"] == 0.9
    assert card["referral"]["label"]["reachable"] is referral["reachable"]  # False where the one-class sets are < 90%
    assert card["training"]["imbalance_correction"].startswith("none: the predicted class is the most probable")


def test_model_card_without_calibration_and_schema_errors(breast_run):
    card = RunFolder(breast_run).write_model_card()
    assert card["calibration"] is None and card["referral"] is None and card["performance"]["source"] == "train"
    assert card["uncertainty"]["mc_samples"] == 0
    broken = json.loads(json.dumps(card))
    broken["network_data_format"]["inputs"]["image"]["num_channels"] = 4
    with pytest.raises(ValueError, match="network_data_format/inputs/image/num_channels"):
        validate_model_card(broken)
    del broken["intended_use"]
    with pytest.raises(ValueError, match="intended_use"):
        validate_model_card(broken)


def test_sensitive_sources_never_show_paths_or_case_names(breast_run, data_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(breast_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["sources"]["breast"]["sensitive"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    html = write_report(run, mc_samples=4, gallery_size=2, max_tsne_points=60).read_text()
    case_ids = pd.read_csv(run / "predictions.csv")["case_id"]
    assert not [c for c in case_ids if f">{c}<" in html]
    assert "test case #" in html
    assert str(data_root) not in html and "breastmnist.npz" not in html
    card = (run / "model" / "metadata.json").read_text()
    assert "breastmnist.npz" not in card and "withheld" in card


def test_explain_cli_writes_overlays(breast_run, data_root, tmp_path, capsys):
    images = np.load(data_root / "medmnist" / "breastmnist.npz")["test_images"][:3]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"case {i}.png")
    out = tmp_path / "cams"
    assert main(["explain", str(breast_run), str(folder), "--output", str(out), "--class", "malignant"]) == 0
    table = pd.read_csv(out / "explanations.csv")
    assert len(table) == 3 and set(table["explained_class"]) == {"malignant"}
    for file in table["file"]:
        with Image.open(out / file) as overlay:
            assert overlay.size == (32, 32) and overlay.mode == "RGB"
    assert main(["explain", str(breast_run), str(folder), "--output", str(out), "--class", "tumour"]) == 2
    assert "unknown class 'tumour'" in capsys.readouterr().err


def test_report_of_a_folder_that_is_no_run_fails_with_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a finished run folder: config.yaml is missing" in err and "\n" not in err


def test_model_card_version_without_installed_package_metadata(monkeypatch):
    """Run from a source tree (PYTHONPATH=src, as on a cluster node): the card still has a valid version."""
    from importlib import metadata

    from dualfuse.evaluation import model_card

    def missing(package):
        raise metadata.PackageNotFoundError(package)

    monkeypatch.setattr(model_card.importlib_metadata, "version", missing)
    assert model_card._version("dualfuse") == __import__("dualfuse").__version__
    assert model_card._version("timm") == "not installed"
