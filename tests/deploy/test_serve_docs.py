"""docs/benchmarks.md's Serving section comes from benchmarks/serve.py's JSON (no torch needed)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _make_docs():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmarks_make_docs_serving", BENCHMARKS / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _level(clients, p50, p95, rps, batch):
    return {"clients": clients, "requests": 96, "failed": 0, "failures": [], "p50_ms": p50, "p95_ms": p95,
            "throughput_per_s": rps, "wall_seconds": 1.0, "mean_batch": batch, "what": "DCAT, RANDOM weights"}


def test_serving_section_lists_levels_offline_numbers_and_targets(tmp_path):
    run = {"machine": {"device_name": "Test CPU, 2 cores, 2 threads", "torch": "2.x"}, "server_threads": 2,
           "command": "python benchmarks/serve.py", "load_avg_at_start": 0.5, "load_avg_at_end": 1.5,
           "server": "dualfuse serve (1 uvicorn worker)",
           "offline": {"runtime": "onnxruntime 1.x", "batch": 32, "images_per_s": 100.0, "one_image_ms_median": 20.0,
                       "what": "no HTTP"},
           "levels": [_level(1, 20.0, 60.0, 45.0, 1.0), _level(32, 300.0, 400.0, 80.0, 12.0)],
           "targets": {"p95_at_1_client_ms": {"target": 50.0, "measured": 60.0, "met": False},
                       "throughput_32_clients_vs_offline": {"target": 0.5, "measured": 0.8, "met": True}}}
    (tmp_path / "serve_cpu.json").write_text(json.dumps(run))
    out = tmp_path / "benchmarks.md"
    assert _make_docs().main(["--results", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Serving" in text and "Every row: DCAT, RANDOM weights." in text
    assert "| 1 | 96 | 0 | 20.0 | 60.0 | 45.0 | 1.0 |" in text and "| 32 | 96 | 0 | 300.0 | 400.0 | 80.0 | 12.0 |" in text
    assert "Offline, onnxruntime 1.x: 100.0 images/s in batches of 32" in text
    assert "p95 at one client (ms): 60.00 against 50: **missed**" in text
    assert "offline batch throughput: 0.80 against 0.5: met" in text
