"""Serving benchmark: latency and throughput of `dualfuse serve` at 1, 8 and 32 concurrent clients, next to
offline batch throughput of the same computation, measured in the same run on this machine.

The model is DCAT as built by default (EfficientNet-B4 + ResNet-34 trunks, 256-d fusion), one grey
channel at 64 px, with RANDOM weights and a hand-set calibration for T = 30 MC-dropout samples:
the numbers time the computation (a trained DCAT of this shape costs the same), they say nothing
about accuracy. Clients are httpx async clients on localhost, each sending one real PneumoniaMNIST
test image per request (upsampled to a 64x64 PNG); the server runs in its own process.

    DUALFUSE_DATA=../shared/data python benchmarks/serve.py --out docs/results/serve_cpu.json

Exits non-zero if any request fails.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, machine, write_json  # noqa: E402

IMG_SIZE = 64
CLASSES = ["normal", "pneumonia"]
TARGET_P95_MS = 50.0
TARGET_SHARE = 0.5


def build_model(folder: Path, mc_samples: int) -> Path:
    """Default-size DCAT at 64 px, one channel, random weights, a hand-set calibration for T samples."""
    import torch

    from dualfuse.models import ModelSpec, Preprocessing, create_model
    from dualfuse.models.saved import save_model

    torch.manual_seed(0)
    kwargs = {"in_chans": 1, "num_classes": {"label": len(CLASSES)}}
    model = create_model("dcat", **kwargs).eval()
    spec = ModelSpec(name="dcat", kwargs=kwargs, tasks={"label": CLASSES}, modalities=["image"],
                     preprocessing=Preprocessing(img_size=IMG_SIZE, resize="resize", normalize="zscore",
                                                 in_chans={"image": 1}))
    save_model(folder, model, spec)
    key = f"1x{mc_samples}"
    calibration = {"format": 2, "seed": 0, "rows": 32, "calibration_split": "cal", "members": [], "default": key,
                   "calibration_note": "hand-set for a timing benchmark (random weights)",
                   "predictors": {key: {"label": {
                       "predictor": key, "temperature": 1.0,
                       "referral": {"threshold": 0.8, "confidence": "max_prob", "reachable": True},
                       "conformal": {"lac": {"alpha": 0.1, "qhat": 0.6}, "aps": {"alpha": 0.1, "qhat": 0.9}}}}}}
    (folder / "uncertainty.json").write_text(json.dumps(calibration))
    return folder


def payloads(data_root: Path, count: int) -> list[bytes]:
    """Real PneumoniaMNIST test images as 64x64 grey PNG files (what a client uploads)."""
    images = np.load(data_root / "medmnist" / "pneumoniamnist.npz")["test_images"][:count]
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).resize((IMG_SIZE, IMG_SIZE), Image.Resampling.BILINEAR).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def offline_throughput(model_dir: Path, files: list[bytes], batch: int, repeats: int, runtime: str) -> dict:
    """The same computation without HTTP: `InferenceService.predict` on decoded batches, images/s."""
    from dualfuse.deploy.service import InferenceService

    service = InferenceService(model_dir, runtime=runtime)
    cases = [{"image": service.decoder.decode("file", "image", data)} for data in files]
    service.predict(cases[:batch])  # warm-up: first calls at a batch size build its kernels
    service.predict(cases[:1])
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        service.predict(cases[k * batch % len(cases):][:batch])
        times.append(time.perf_counter() - start)
    single = []
    for case in cases[:2 * repeats]:
        start = time.perf_counter()
        service.predict([case])
        single.append(time.perf_counter() - start)
    return {"runtime": service.describe()["runtime"], "batch": batch, "repeats": repeats,
            "batch_seconds_median": statistics.median(times), "images_per_s": batch / statistics.median(times),
            "one_image_ms_median": 1000 * statistics.median(single),
            "what": f"InferenceService.predict on {batch} decoded 64x64 images per call (T = "
                    f"{service.predictor.samples} MC samples, no HTTP, no decoding), median of {repeats}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model_dir: Path, port: int, max_batch: int) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "dualfuse.cli", "serve", str(model_dir), "--port", str(port),
               "--max-batch", str(max_batch)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve.py: the server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("serve.py: the server did not start within 300 s")


async def load_level(base: str, clients: int, per_client: int, files: list[bytes]) -> dict:
    """`clients` concurrent clients, each sending `per_client` requests one after another."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []

    async def client(index: int, session: httpx.AsyncClient, count: int, record: bool) -> None:
        for k in range(count):
            data = files[(index * per_client + k) % len(files)]
            start = time.perf_counter()
            try:
                response = await session.post(f"{base}/predict", files={"file": ("x.png", data, "image/png")})
                ok = response.status_code == 200 and "tasks" in response.json()
                if not ok:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as error:
                failures.append(type(error).__name__)
                ok = False
            if record and ok:
                latencies.append(time.perf_counter() - start)

    sessions = [httpx.AsyncClient(timeout=600) for _ in range(clients)]
    try:
        await asyncio.gather(*[client(i, s, 2, False) for i, s in enumerate(sessions)])  # warm-up
        before = httpx.get(f"{base}/healthz").json()["batching"]
        start = time.perf_counter()
        await asyncio.gather(*[client(i, s, per_client, True) for i, s in enumerate(sessions)])
        wall = time.perf_counter() - start
        after = httpx.get(f"{base}/healthz").json()["batching"]
    finally:
        await asyncio.gather(*[s.aclose() for s in sessions])
    requests = clients * per_client
    batches = after["batches"] - before["batches"]
    ms = sorted(1000 * x for x in latencies)
    return {"clients": clients, "requests": requests, "failed": len(failures), "failures": failures[:5],
            "p50_ms": float(np.percentile(ms, 50)) if ms else None,
            "p95_ms": float(np.percentile(ms, 95)) if ms else None,
            "throughput_per_s": requests / wall, "wall_seconds": wall,
            "mean_batch": (after["requests"] - before["requests"]) / batches if batches else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results" / "serve_cpu.json")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=96, help="measured requests per level, at least 3 per client")
    parser.add_argument("--mc-samples", type=int, default=30)
    parser.add_argument("--offline-repeats", type=int, default=5)
    args = parser.parse_args(argv)
    data_root = Path(os.environ.get("DUALFUSE_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (data_root / "medmnist" / "pneumoniamnist.npz").is_file():
        print(f"serve.py: {data_root}/medmnist/pneumoniamnist.npz not found (set DUALFUSE_DATA)", file=sys.stderr)
        return 2
    files = payloads(data_root, 256)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        model_dir = build_model(Path(folder) / "dcat64", args.mc_samples)
        offline = offline_throughput(model_dir, files, 32, args.offline_repeats, "auto")
        offline_torch = offline_throughput(model_dir, files, 32, args.offline_repeats, "torch")
        port = free_port()
        server = start_server(model_dir, port, max_batch=32)
        try:
            levels = [asyncio.run(load_level(f"http://127.0.0.1:{port}", c, max(3, args.requests // c), files))
                      for c in args.clients]
        finally:
            server.terminate()
            server.wait(timeout=60)
    import torch

    what = (f"DCAT (EfficientNet-B4 + ResNet-34, default size, RANDOM weights: timing only) at {IMG_SIZE} px, 1 channel, "
            f"T = {args.mc_samples} MC samples, calibrated referral and conformal set; each request uploads one "
            "PneumoniaMNIST test image as a 64x64 grey PNG (~3 kB)")
    for level in levels:
        level["what"] = what
    by_clients = {level["clients"]: level for level in levels}
    targets = {}
    if 1 in by_clients:
        targets["p95_at_1_client_ms"] = {"target": TARGET_P95_MS, "measured": by_clients[1]["p95_ms"],
                                         "met": by_clients[1]["p95_ms"] <= TARGET_P95_MS}
    if 32 in by_clients:
        share = by_clients[32]["throughput_per_s"] / offline["images_per_s"]
        targets["throughput_32_clients_vs_offline"] = {"target": TARGET_SHARE, "measured": share,
                                                       "met": share >= TARGET_SHARE}
    result = {"machine": machine(), "server_threads": torch.get_num_threads(),
              "command": "python benchmarks/serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg()[0],
              "server": f"dualfuse serve (1 uvicorn worker, {offline['runtime']}, --max-batch 32, --max-wait-ms 5)",
              "offline": offline, "offline_torch": offline_torch, "levels": levels, "targets": targets}
    write_json(args.out, result)
    print(f"{'clients':>7} {'requests':>8} {'failed':>6} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7} {'mean batch':>10}")
    for level in levels:
        print(f"{level['clients']:>7} {level['requests']:>8} {level['failed']:>6} {level['p50_ms']:>8.1f} "
              f"{level['p95_ms']:>8.1f} {level['throughput_per_s']:>7.2f} {level['mean_batch'] or 0:>10.2f}")
    for entry in (offline, offline_torch):
        print(f"offline, {entry['runtime']}: batch of 32 {entry['images_per_s']:.2f} images/s; one image alone "
              f"{entry['one_image_ms_median']:.1f} ms")
    print(f"load average {load_start:.1f} at start, {result['load_avg_at_end']:.1f} at end")
    for name, target in targets.items():
        print(f"target {name}: {target['measured']:.2f} vs {target['target']} -> {'met' if target['met'] else 'MISSED'}")
    print(f"wrote {args.out}")
    failed = sum(level["failed"] for level in levels)
    if failed:
        print(f"serve.py: {failed} request(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
