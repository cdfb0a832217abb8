"""`dualfuse serve`: a trained model behind FastAPI + uvicorn, with a page a clinician can use.

    GET  /            the page (self-contained HTML, strict Content-Security-Policy)
    POST /predict     multipart upload(s) → probabilities, predicted class, uncertainty, refer, conformal set
    POST /explain     the same upload(s) → Grad-CAM overlay and the image as the model saw it (PNG, base64)
    GET  /healthz     liveness, the model, batching counters
    GET  /metadata    the model card
    GET  /docs        OpenAPI (FastAPI's page)

Bad uploads get a 4xx with one line; nothing a client sends can stop the server. File names and
DICOM header values are never logged or echoed: uploads are read from their bytes, the access
log is ours (method, path, status, time) and the DICOM/NIfTI/PIL libraries' own logs and warnings
are silenced.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from dualfuse.deploy.batcher import MicroBatcher
from dualfuse.deploy.page import HEADERS, render_page
from dualfuse.deploy.service import InferenceService
from dualfuse.deploy.uploads import UploadError

LOG = logging.getLogger("dualfuse.serve")
MIB = 1024 * 1024
ENVIRONMENT = "DUALFUSE_SERVE_OPTIONS"  # how `--workers N` hands the options to each worker process
WORKER_STARTUP_S = 300
_QUIET_LOGGERS = ("pydicom", "nibabel", "PIL", "python_multipart", "multipart", "uvicorn.access")


class _TooLarge(Exception):
    """The request body grew past the limit while it was being read."""


def quiet_libraries() -> None:
    """Libraries that could log or warn with a file name or a DICOM header value stay silent."""
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.CRITICAL + 1)
        logger.propagate = False
    warnings.filterwarnings("ignore", module=r"(pydicom|nibabel|PIL)(\..*)?$")


class _Guard:
    """ASGI middleware: refuses bodies over the upload limit and writes the access log (no query, no names)."""

    def __init__(self, app, max_body: int, limit: int):
        self.app, self.max_body, self.limit = app, max_body, limit  # the whole body; one file (for the message)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), {"code": 500}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        length = dict(scope.get("headers", [])).get(b"content-length")
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await _send_json(sending, 413, _too_large(self.limit))
                return
            received = 0

            async def limited():
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge
                return message

            await self.app(scope, limited, sending)
        finally:
            LOG.info("%s %s %d %.1f ms", scope["method"], scope["path"], status["code"],
                     1000 * (time.perf_counter() - start))


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> str:
    return f"upload too large: the limit is {limit / MIB:g} MB per file (serve --max-upload-mb)"


def _upload_schema(modalities: list[str]) -> dict:
    fields = modalities if len(modalities) > 1 else ["file"]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": fields,
        "properties": {name: {"type": "string", "format": "binary",
                              "description": "PNG, JPEG, BMP, TIFF, DICOM or NIfTI (central slice)"}
                       for name in fields}}}}}}


def create_app(path: str | Path, mc_samples: int | None = None, max_upload_mb: float = 20.0, max_batch: int = 32,
               max_wait_ms: float = 5.0, rows: int | None = None, runtime: str = "auto") -> FastAPI:
    """The app for the run folder, bundle or model folder at `path` (the model is loaded now)."""
    if max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {max_upload_mb:g}")
    quiet_libraries()
    service = InferenceService(path, mc_samples=mc_samples, rows=rows, runtime=runtime)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dualfuse-model")
    batcher = MicroBatcher(service.predict, executor, max_batch=max_batch, max_wait=max_wait_ms / 1000)
    limit = int(max_upload_mb * MIB)
    page = render_page(service.describe(), max_upload_mb)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()
        executor.shutdown(wait=False, cancel_futures=True)

    about = service.describe()
    app = FastAPI(title=f"dualfuse: {about['model']}", version=about["version"], lifespan=lifespan,
                  description="Predictions with calibrated uncertainty, referral advice, conformal sets and "
                              "Grad-CAM for one trained dualfuse model. Research use only.")
    app.state.service, app.state.batcher = service, batcher
    app.add_middleware(_Guard, max_body=limit * len(service.modalities) + 64 * 1024, limit=limit)  # + framing

    @app.exception_handler(UploadError)
    async def refused(request: Request, error: UploadError):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    async def cases(request: Request):
        """The request's uploads, decoded (in a worker thread) into one case: modality → tensor."""
        try:
            form = await request.form(max_files=len(service.modalities) + 4, max_fields=16)
        except _TooLarge:
            raise UploadError(413, _too_large(limit)) from None
        except MultiPartException as error:
            raise UploadError(400, f"malformed multipart request: {error.message}") from None
        try:
            uploads = [(name, value) for name, value in form.multi_items() if isinstance(value, UploadFile)]
            others = sorted({name for name, value in form.multi_items() if not isinstance(value, UploadFile)})
            if others:
                raise UploadError(422, f"unexpected form field(s) {', '.join(others)}; send image files only")
            if not uploads:
                raise UploadError(422, "no image: send multipart/form-data with "
                                       + ("one file" if len(service.modalities) == 1
                                          else f"one file per modality ({', '.join(service.modalities)})"))
            modality_of = service.decoder.fields([name for name, _ in uploads])
            case = {}
            for name, upload in uploads:
                data = await upload.read()
                if len(data) > limit:
                    raise UploadError(413, _too_large(limit))
                case[modality_of[name]] = await run_in_threadpool(service.decoder.decode, name,
                                                                  modality_of[name], data)
            return case
        finally:
            await form.close()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers=HEADERS)

    @app.get("/healthz", summary="Liveness, the model served and batching counters")
    async def healthz():
        return {"status": "ok", **service.describe(), "batching": batcher.stats()}

    @app.get("/metadata", summary="The model card (MONAI bundle metadata keys)")
    async def metadata():
        return service.card

    @app.post("/predict", summary="Probabilities, uncertainty, referral and conformal set for one case",
              openapi_extra=_upload_schema(service.modalities))
    async def predict(request: Request):
        batcher.expect()
        try:
            case = await cases(request)
        except BaseException:
            batcher.unexpect()
            raise
        try:
            return await batcher.submit(case, expected=True)
        except Exception as error:  # a model failure answers this request; the server keeps serving
            return _internal_error(request, error)

    @app.post("/explain", summary="Grad-CAM overlay of one case (PNG, base64), beside the image the model saw",
              openapi_extra=_upload_schema(service.modalities))
    async def explain(request: Request, task: str | None = None, target_class: str | None = None):
        case = await cases(request)
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, service.explain, case, task,
                                                                    target_class)
        except KeyError as error:
            raise UploadError(422, str(error.args[0])) from None
        except Exception as error:
            return _internal_error(request, error)

    return app


def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """500 with the error's type only: its message could quote the input."""
    LOG.error("%s %s failed: %s", request.method, request.url.path, type(error).__name__)
    return JSONResponse({"detail": f"internal error ({type(error).__name__}); the server keeps serving"},
                        status_code=500)


def app_from_environment() -> FastAPI:
    """The app a `--workers N` worker process builds from the options `run_server` left in the environment."""
    options = json.loads(os.environ[ENVIRONMENT])
    app = create_app(**options)
    _log_to_stderr()  # a spawned worker does not inherit the parent's logging
    return app


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def run_server(path: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
               mc_samples: int | None = None, max_upload_mb: float = 20.0, max_batch: int = 32,
               max_wait_ms: float = 5.0, rows: int | None = None, runtime: str = "auto", on_ready=None) -> None:
    """Serve until interrupted. With `workers` > 1 each uvicorn worker process loads its own copy."""
    import uvicorn

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    options = {"path": str(path), "mc_samples": mc_samples, "max_upload_mb": max_upload_mb, "max_batch": max_batch,
               "max_wait_ms": max_wait_ms, "rows": rows, "runtime": runtime}
    app = create_app(**options)  # with several workers too: fail here, once, in one line, not in every worker
    _log_to_stderr()
    if on_ready is not None:
        on_ready(app)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
        return
    del app
    os.environ[ENVIRONMENT] = json.dumps(options)
    # A worker imports torch and loads the model before it answers uvicorn's health check: give it time.
    uvicorn.run("dualfuse.deploy.serve:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_config=None, access_log=False, timeout_worker_healthcheck=WORKER_STARTUP_S)
