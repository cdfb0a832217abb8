"""The page at / in headless Chromium: a clinician drops a real image and sees the answer and the overlay.

The screenshot it takes is the one in the README (docs/images/serve.png): generated here, never drawn.
It lands there only with DUALFUSE_UPDATE_SCREENSHOT=1, so a test run never rewrites a tracked file.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from deploy_helpers import BRAIN, served_model_folder
from PIL import Image

from dualfuse.deploy.serve import create_app

pytestmark = pytest.mark.realdata
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "serve.png"


def _chromium_or_skip() -> str:
    if CHROMIUM:
        return CHROMIUM
    message = "Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(module_tmp):
    """uvicorn on a free localhost port, in a thread, serving a tiny calibrated DCAT (random weights)."""
    # Brain tumour classes for a brain MRI upload, 64 px input: the page shows it at 320 px all the same.
    app = create_app(served_model_folder(module_tmp("served") / "model", BRAIN, img_size=64))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_clinician_drops_a_real_image_and_sees_prediction_uncertainty_and_overlay(server, data_root, tmp_path):
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    image = sorted((data_root / "brain-tumor-mri" / "testing" / "meningioma").glob("*.jpg"))[0]
    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/", wait_until="load")
        page.set_input_files("input[type=file]", str(image))  # a single-input model predicts on choosing
        page.wait_for_selector("#app[data-state=done]", timeout=60_000)
        text = page.inner_text("#results")
        verdict = page.inner_text(".verdict")
        overlay = page.locator("img.overlay").bounding_box()
        picture = page.locator("img.input").bounding_box()
        loaded = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth >= 256)")
        shot_path = SCREENSHOT if os.environ.get("DUALFUSE_UPDATE_SCREENSHOT") == "1" else tmp_path / "serve.png"
        page.screenshot(path=str(shot_path), full_page=True)
        browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(server + "/") and not u.startswith("data:")] == []
    assert "Task: label" in text and "prediction set" in text and "mutual information" in text
    assert ("refer to a specialist" in verdict) or verdict.startswith("Confident")
    assert overlay["width"] >= 256 and overlay["height"] >= 256 and picture["width"] >= 256
    assert overlay["x"] > picture["x"] and abs(overlay["y"] - picture["y"]) < 5  # beside the image
    assert loaded
    shot = np.asarray(Image.open(shot_path).convert("L"), dtype=np.float32)
    assert shot.shape[1] == 1100 and shot.std() > 20  # text, bars and pictures, not a blank page
