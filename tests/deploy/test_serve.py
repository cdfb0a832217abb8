"""The HTTP API: every route, every kind of bad upload (the server keeps serving), privacy, micro-batching."""
from __future__ import annotations

import asyncio
import io
import json
import logging

import httpx
import numpy as np
import pydicom
import pytest
from deploy_helpers import BREAST, served_model_folder, tiny_model_folder, write_real_images
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file

from dualfuse.api import load_model
from dualfuse.api.prediction import prediction_loader
from dualfuse.cli import main
from dualfuse.deploy.serve import create_app
from dualfuse.evaluation.predictions import CANONICAL_ROWS

pytestmark = pytest.mark.realdata
SECRETS = ("Doe", "Jane", "SECRET-ID-4711", "jane_doe")


@pytest.fixture(scope="module")
def real_images(data_root, module_tmp):
    return write_real_images(data_root, module_tmp("real"))


@pytest.fixture(scope="module")
def served_model(module_tmp):
    return served_model_folder(module_tmp("served") / "model")


@pytest.fixture(scope="module")
def client(served_model):
    with TestClient(create_app(served_model, max_upload_mb=4)) as test_client:
        yield test_client


def _png_bytes(path) -> bytes:
    return path.read_bytes()


def _secret_dicom(pixels: bool = True) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = "Doe^Jane", "SECRET-ID-4711"
    if not pixels:
        del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _one_line(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail, response.text
    return detail


def test_health_metadata_docs_and_openapi(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"] == "dcat" and health["mc_samples"] == 8
    assert health["calibrated"] is True and health["tasks"] == {"label": BREAST}
    assert health["runtime"].startswith("onnxruntime")  # the default for one network, checked at startup
    card = client.get("/metadata").json()
    assert card["name"] == "dcat" and "intended_use" in card and card["network_data_format"]["inputs"]["image"]
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["format"] == "binary"
    assert "/explain" in schema["paths"]


def test_predict_answers_what_dualfuse_predict_computes(client, served_model, real_images):
    response = client.post("/predict", files={"file": ("scan.png", _png_bytes(real_images["png"]), "image/png")})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "dcat" and answer["version"] and len(answer["weights_sha256"]) == 16
    assert answer["mc_samples"] == 8 and answer["calibrated"] is True
    entry = answer["tasks"]["label"]
    assert set(entry["probabilities"]) == set(BREAST) and sum(entry["probabilities"].values()) == pytest.approx(1)
    assert entry["predicted"] == max(entry["probabilities"], key=entry["probabilities"].get)
    assert entry["predictive_entropy"] >= entry["mutual_information"] >= 0
    assert isinstance(entry["conformal_set"], list) and entry["referral_threshold"] == 0.9
    assert entry["refer"] == (entry["confidence"] < 0.9 or len(entry["conformal_set"]) != 1)
    assert bool(entry["refer_reasons"]) == entry["refer"]
    # The numbers of the Python API (and `dualfuse predict`) for this file: same predictor, temperature
    # and per-case masks (the case id is a hash of the pixels), computed by onnxruntime on one row
    # where predict runs PyTorch on canonical chunks of 32: equal up to summation order.
    loaded = load_model(served_model)
    batch = next(iter(prediction_loader([str(real_images["png"])], loaded.spec)))
    expected = loaded.predict_proba(batch["image"])["label"][0]
    np.testing.assert_allclose([entry["probabilities"][c] for c in BREAST], expected, rtol=0, atol=1e-6)


def test_dicom_and_nifti_uploads_are_read_like_files(client, data_root):
    dicom = client.post("/predict", files={"file": ("x", _secret_dicom(), "application/dicom")})
    nifti = client.post("/predict", files={"file": ("x", (data_root / "brats-case" / "t1c.nii.gz").read_bytes())})
    assert dicom.status_code == 200 and nifti.status_code == 200, (dicom.text, nifti.text)
    assert dicom.json()["tasks"]["label"]["probabilities"] != nifti.json()["tasks"]["label"]["probabilities"]


def _truncated_png(path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


BAD_UPLOADS = [
    ("not an image", lambda p: {"files": {"file": ("notes.txt", b"just some text, not pixels" * 20)}}, 400),
    ("truncated", lambda p: {"files": {"file": ("cut.png", _truncated_png(p))}}, 400),
    ("empty file", lambda p: {"files": {"file": ("empty.png", b"")}}, 400),
    ("DICOM without pixels", lambda p: {"files": {"file": ("jane_doe_empty.dcm", _secret_dicom(pixels=False))}}, 400),
    ("too large", lambda p: {"files": {"file": ("big.png", b"\0" * (5 * 1024 * 1024))}}, 413),
    ("two files", lambda p: {"files": [("file", ("a.png", p.read_bytes())), ("other", ("b.png", p.read_bytes()))]},
     422),
    ("no file", lambda p: {"data": {"note": "hello"}}, 422),
    ("a text field besides the file", lambda p: {"files": {"file": ("a.png", p.read_bytes())}, "data": {"x": "1"}},
     422),
    ("not multipart", lambda p: {"content": b"{}", "headers": {"content-type": "application/json"}}, 422),
]


@pytest.mark.parametrize("kind, request_kwargs, status", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_get_one_line_4xx_and_the_server_keeps_serving(client, real_images, kind, request_kwargs, status):
    response = client.post("/predict", **request_kwargs(real_images["png"]))
    assert response.status_code == status, response.text
    detail = _one_line(response)
    assert not any(name in detail for name in ("notes.txt", "cut.png", "empty.png", "jane_doe", "/tmp"))
    good = client.post("/predict", files={"file": ("a.png", _png_bytes(real_images["png"]))})
    assert good.status_code == 200 and client.get("/healthz").status_code == 200


def test_bad_upload_messages_say_what_is_wrong(client, real_images):
    cases = {"DICOM has no pixel data": _secret_dicom(pixels=False), "truncated": _truncated_png(real_images["png"])}
    for expected, data in cases.items():
        assert expected in _one_line(client.post("/predict", files={"file": ("x", data)}))
    too_large = client.post("/predict", files={"file": ("x", b"\0" * (5 * 1024 * 1024))})
    assert "the limit is 4 MB" in _one_line(too_large)


def test_explain_returns_overlay_at_readable_size(client, real_images):
    response = client.post("/explain?target_class=malignant", files={"file": ("a.png", real_images["png"].read_bytes())})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["task"] == "label" and answer["explained_class"] == "malignant" and len(answer["maps"]) == 1
    for key in ("image_png", "overlay_png"):
        import base64

        image = Image.open(io.BytesIO(base64.b64decode(answer["maps"][0][key])))
        assert min(image.size) >= 256  # the model saw 32 px; the page shows it large
    unknown = client.post("/explain?task=nope", files={"file": ("a.png", real_images["png"].read_bytes())})
    assert unknown.status_code == 422 and "unknown task" in _one_line(unknown)
    wrong = client.post("/explain?target_class=cat", files={"file": ("a.png", real_images["png"].read_bytes())})
    assert wrong.status_code == 422 and "unknown class" in _one_line(wrong)


def test_file_names_and_dicom_header_fields_are_never_logged_or_echoed(client, real_images, caplog):
    caplog.set_level(logging.DEBUG)
    responses = [client.post("/predict", files={"file": ("jane_doe_scan.dcm", _secret_dicom())}),
                 client.post("/predict", files={"file": ("jane_doe_empty.dcm", _secret_dicom(pixels=False))}),
                 client.post("/explain", files={"file": ("jane_doe_scan.dcm", _secret_dicom())})]
    assert [r.status_code for r in responses] == [200, 400, 200]
    logged = caplog.text
    assert "POST /predict 200" in logged and "POST /predict 400" in logged  # the access log is there ...
    echoed = [json.dumps(_without_pictures(r.json())) for r in responses]
    for secret in SECRETS:  # ... and says nothing about whose scan it was
        assert secret not in logged
        assert all(secret not in text for text in echoed)


def _without_pictures(answer: dict) -> dict:
    """An answer without its base64 PNGs (whose letters may spell anything)."""
    maps = [{k: v for k, v in m.items() if not k.endswith("_png")} for m in answer.get("maps", [])]
    return {**answer, "maps": maps} if "maps" in answer else answer


def test_a_failing_model_answers_500_in_one_line_and_the_server_keeps_serving(client, real_images, monkeypatch):
    service = client.app.state.service
    original = service.predict
    calls = {"n": 0}

    def flaky(cases):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory while reading /secret/jane_doe.png")
        return original(cases)

    monkeypatch.setattr(client.app.state.batcher, "run", flaky)
    upload = {"file": ("a.png", real_images["png"].read_bytes())}
    failed = client.post("/predict", files=upload)
    assert failed.status_code == 500 and "jane_doe" not in _one_line(failed)
    assert client.post("/predict", files=upload).status_code == 200


def test_concurrent_requests_share_forward_passes_and_get_batch_independent_answers(served_model, real_images):
    # Canonical rows: every model call computes 32 rows, so batching cannot change a single bit.
    app = create_app(served_model, max_wait_ms=300, rows=CANONICAL_ROWS)
    files = sorted(real_images["pngs"].glob("breast_*.png"))

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            alone = [(await http.post("/predict", files={"file": ("x", f.read_bytes())})).json() for f in files[:2]]
            together = await asyncio.gather(*[http.post("/predict", files={"file": ("x", f.read_bytes())})
                                              for f in files])
            return alone, [r.json() for r in together]

    alone, together = asyncio.run(burst())
    stats = app.state.batcher.stats()
    assert stats["requests"] == 2 + len(files) and stats["largest_batch"] >= 4 and stats["batches"] < stats["requests"]
    for single, batched in zip(alone, together):  # a case's answer does not depend on its neighbours
        single, batched = single["tasks"]["label"], batched["tasks"]["label"]
        assert single["probabilities"] == batched["probabilities"] and single["refer"] == batched["refer"]
        assert single["conformal_set"] == batched["conformal_set"]
        # Entropies are summed by numpy over arrays of another length: equal to rounding.
        assert single["mutual_information"] == pytest.approx(batched["mutual_information"], rel=1e-9, abs=1e-15)
    # ... and equal `dualfuse predict`'s to the bit.
    loaded = load_model(served_model)
    batch = next(iter(prediction_loader([str(files[0])], loaded.spec)))
    expected = loaded.predict_proba(batch["image"])["label"][0]
    assert [alone[0]["tasks"]["label"]["probabilities"][c] for c in BREAST] == expected.tolist()


def test_multi_input_model_takes_one_named_file_per_modality(real_images, tmp_path):
    with TestClient(create_app(tiny_model_folder(tmp_path / "drifa", "drifa_net"), runtime="torch")) as client:
        mri, png = real_images["mri"].read_bytes(), real_images["png"].read_bytes()
        good = client.post("/predict", files={"mri": ("a", mri), "ultrasound": ("b", png)})
        assert good.status_code == 200, good.text
        answer = good.json()
        assert set(answer["tasks"]) == {"tumour", "lesion"} and answer["calibrated"] is False
        assert answer["tasks"]["tumour"]["conformal_set"] is None and answer["tasks"]["tumour"]["refer"] is False
        missing = client.post("/predict", files={"mri": ("a", mri)})
        assert missing.status_code == 422 and "missing ultrasound" in _one_line(missing)
        renamed = client.post("/predict", files={"mri": ("a", mri), "ct": ("b", png)})
        assert renamed.status_code == 422 and "unexpected ct" in _one_line(renamed)
        assert "ultrasound" in client.get("/").text


def test_serve_refuses_what_it_cannot_load_in_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dualfuse serve: error:")
    assert main(["serve", str(tmp_path), "--max-upload-mb", "0"]) == 2


def test_page_is_self_contained_with_a_strict_policy(client):
    response = client.get("/")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy
    html = response.text
    assert "http://" not in html and "https://" not in html and "<script src" not in html
    assert json.loads(html.split('data-modalities="')[1].split('"')[0].replace("&#34;", '"')) == ["image"]
