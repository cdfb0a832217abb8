"""Export: parity of every registered model in ONNX, TorchScript, bundles, the manifest, refusals."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml
from deploy_helpers import PX, TINY, served_model_folder, tiny_model_folder, write_real_images
from fastapi.testclient import TestClient

import dualfuse
from dualfuse.api import load_model
from dualfuse.cli import main
from dualfuse.config import dump_run_config, parse_run_args
from dualfuse.data.transforms import build_transform
from dualfuse.deploy.export import MANIFEST, ExportError, export_model, parity_batch
from dualfuse.deploy.runners import OnnxRunner
from dualfuse.deploy.serve import create_app

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def real_images(data_root, module_tmp):
    return write_real_images(data_root, module_tmp("real"))


@pytest.fixture(scope="module")
def served_model(module_tmp):
    return served_model_folder(module_tmp("served") / "model")


def _parity_source(name, real_images):
    return real_images["pairs"] if len(TINY[name][1]) > 1 else real_images["npz"]


def test_every_registered_model_has_a_tiny_export_config():
    assert set(TINY) == set(dualfuse.list_models())


@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_export_of_every_model_matches_pytorch_on_real_images(name, real_images, tmp_path, capsys):
    model_dir = tiny_model_folder(tmp_path / "model", name)
    code = main(["export", str(model_dir), "--format", "onnx", "--output", str(tmp_path / "onnx"),
                 "--parity-images", str(_parity_source(name, real_images)), "--parity-count", "6",
                 "--mc-samples", "3"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    print(printed)  # the parity numbers, per model, in the test log
    assert "parity, onnxruntime" in printed and "max |Δp| deterministic" in printed
    manifest = json.loads((tmp_path / "onnx" / MANIFEST).read_text())
    diffs = manifest["parity"]["max_abs_diff"]
    assert manifest["parity"]["images"] == 6 and manifest["parity"]["passed"]
    assert diffs["deterministic"] <= 1e-4 and diffs["mc_mean"] <= 1e-4
    for graph in ("deterministic", "stochastic"):
        model = onnx.load(tmp_path / "onnx" / manifest["graphs"][graph]["file"])
        assert model.opset_import[0].version >= 17
        assert all(i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input)  # dynamic batch axis
    modalities = TINY[name][1]
    assert [i["name"] for i in manifest["graphs"]["deterministic"]["inputs"]] == modalities
    assert [o["task"] for o in manifest["graphs"]["stochastic"]["outputs"]] == list(TINY[name][2])
    masks = [i for i in manifest["graphs"]["stochastic"]["inputs"] if i["name"].startswith("mask_")]
    assert masks and all(0 < m["p"] < 1 and m["values"][1] == pytest.approx(1 / (1 - m["p"])) for m in masks)
    if name == "drifa_net":  # six branch dropouts per modality, and the head dropout once per modality
        assert len(masks) == 2 * 6 + 2 and [m["module"] for m in masks[-2:]] == ["head_drop", "head_drop"]
        assert len(manifest["graphs"]["deterministic"]["outputs"]) == 2  # one state map per modality
    # A batch size the graphs were not traced with (11 rows) runs and agrees with PyTorch.
    loaded = load_model(model_dir)
    runner = OnnxRunner(tmp_path / "onnx", {g: f"{g}.onnx" for g in ("deterministic", "stochastic")})
    x = [torch.randn(11, 1, PX, PX) for _ in modalities]
    states = runner.deterministic(x)
    ones = [torch.ones(11, *m["shape_per_case"]) for m in masks]
    got = runner.stochastic(states, ones)
    with torch.no_grad():
        expected = loaded.model(dict(zip(modalities, x)) if loaded.model.multi_input else x[0])
    for logits, task in zip(got, TINY[name][2]):
        np.testing.assert_allclose(logits.numpy(), expected[task].numpy(), atol=1e-4)


def test_torchscript_export_matches_pytorch(real_images, tmp_path):
    model_dir = tiny_model_folder(tmp_path / "model", "dcat")
    result = export_model(model_dir, "torchscript", tmp_path / "ts", parity_images=real_images["npz"],
                          parity_count=4, mc_samples=2)
    assert result.parity.passed and result.parity.runtime.startswith("TorchScript")
    assert {"deterministic.pt", "stochastic.pt", MANIFEST} <= set(result.files)
    assert result.parity.deterministic <= 1e-4 and result.parity.mc_mean <= 1e-4


def test_bundle_loads_predicts_and_carries_card_calibration_and_parity(served_model, real_images, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    code = main(["export", str(served_model), "--format", "bundle", "--output", str(bundle),
                 "--parity-images", str(real_images["npz"]), "--parity-count", "4"])
    assert code == 0, capsys.readouterr()
    for required in ("configs/metadata.json", "models/model.safetensors", "models/model.json", "models/model.onnx",
                     "models/uncertainty.json", "models/deterministic.onnx", "models/stochastic.onnx",
                     f"models/{MANIFEST}", "docs/README.md"):
        assert (bundle / required).is_file(), required
    card = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert {"version", "task", "intended_use", "network_data_format", "references"} <= set(card)
    manifest = json.loads((bundle / "models" / MANIFEST).read_text())
    assert manifest["parity"]["max_abs_diff"]["model"] <= 1e-4 and manifest["mc_dropout"]["samples"] == 8
    entry = manifest["calibration"]["predictors"]["1x8"]["label"]
    assert entry["temperature"] == 1.5 and entry["referral_threshold"] == 0.9
    assert entry["conformal"]["lac"]["qhat"] == 0.55
    assert "Parity" in (bundle / "docs" / "README.md").read_text()

    loaded = dualfuse.load_model(bundle)
    assert loaded.spec.name == "dcat" and loaded.mc_samples == 8 and loaded.run is None
    original = load_model(served_model)
    x = torch.randn(3, 1, PX, PX)
    np.testing.assert_array_equal(loaded.predict_proba(x)["label"], original.predict_proba(x)["label"])
    assert main(["predict", str(bundle), str(real_images["png"]), "--output", str(tmp_path / "p.csv")]) == 0
    frame = pd.read_csv(tmp_path / "p.csv")
    assert len(frame) == 1 and {"label_pred", "label_refer", "label_set"} <= set(frame.columns)
    with TestClient(create_app(bundle, runtime="torch")) as client:  # and it serves, with its own card
        assert client.get("/metadata").json() == card
        assert client.post("/predict", files={"file": ("x", real_images["png"].read_bytes())}).status_code == 200


def test_default_parity_images_are_the_runs_test_split(real_images, tmp_path):
    run = tmp_path / "run"
    tiny_model_folder(run / "model", "dcat")
    sources = {"breast": {"format": "medmnist", "path": str(real_images["npz"]),
                          "classes": TINY["dcat"][2]["label"]}}
    config, _ = parse_run_args(["--model.name", "dcat", "--data.sources", json.dumps(sources), "--data.img_size",
                                str(PX), "--data.normalize", "zscore", "--output", str(run)])
    (run / "config.yaml").write_text(dump_run_config(config))
    loaded = load_model(run)
    images = parity_batch(loaded, None, 5)
    assert len(images) == 1 and images[0].shape == (5, 1, PX, PX)
    first_test_image = np.load(real_images["npz"])["test_images"][0]
    transform = build_transform(img_size=PX, in_chans=1, normalize="zscore")
    torch.testing.assert_close(images[0][0], transform(first_test_image))


def test_failed_parity_keeps_the_earlier_export_and_exits_with_one_line(real_images, tmp_path, monkeypatch, capsys):
    output = tmp_path / "onnx"
    model_dir = tiny_model_folder(tmp_path / "model", "timm_classifier")
    args = ["export", str(model_dir), "--format", "onnx", "--output", str(output), "--parity-images",
            str(real_images["npz"]), "--parity-count", "3", "--mc-samples", "2"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    capsys.readouterr()

    original = OnnxRunner.stochastic
    monkeypatch.setattr(OnnxRunner, "stochastic", lambda self, s, m: [x * 1.5 for x in original(self, s, m)])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dualfuse export: error: parity check failed")
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    monkeypatch.undo()  # a passing export replaces the earlier one
    (output / "stale.onnx").write_bytes(b"from an older export")
    assert main(args) == 0
    assert not (output / "stale.onnx").exists() and (output / MANIFEST).is_file()


def test_export_refusals_are_one_line(served_model, real_images, tmp_path, capsys):
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    cases = [
        (["--format", "onnx", "--output", str(stranger)], "is not a dualfuse export"),
        (["--format", "onnx", "--output", str(tmp_path / "x"), "--opset", "13"], "--opset must be at least 17"),
        (["--format", "onnx", "--output", str(tmp_path / "y")], "not a run folder"),
    ]
    for extra, message in cases:
        assert main(["export", str(served_model), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert (stranger / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="ensemble"):
        ensemble = tmp_path / "ensemble"
        tiny_model_folder(ensemble, "dcat")
        member = tiny_model_folder(tmp_path / "member", "dcat", seed=1)
        calibration = yaml.safe_load((served_model / "uncertainty.json").read_text())
        (ensemble / "uncertainty.json").write_text(json.dumps({**calibration, "members": [str(member)]}))
        export_model(ensemble, "onnx", tmp_path / "z", parity_images=real_images["npz"], parity_count=2)
