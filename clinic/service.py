"""A local HTTP service around the warm inference engine, with a viewer page for clinicians: ``make serve``.

``GET /`` is the viewer (``clinic/static``: plain HTML, CSS and JavaScript, nothing fetched from elsewhere);
``GET /health`` says the models are loaded, the bundle version, the device, the operating points and the limits;
``POST /predict`` takes one head X-ray (multipart field ``file``: DICOM, PNG, JPEG or NIfTI) and answers the
inference command's per-image JSON with links to its pictures; ``/docs`` is the OpenAPI page (served offline).

Every request runs through ``clinic.engine.WarmInference``, the bundle's own inference workflow built once. Safety:
an upload is streamed into the work folder under a random request id (never its file name) and refused past the
size limit or when it is not one of the accepted kinds; it is deleted as soon as it has been assessed, and its
results after ``retention_s``; inference runs one request at a time with at most ``max_pending`` requests inside
``/predict`` (more are told to retry); logs name requests by id and carry no file name and no DICOM attribute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from . import REPO_ROOT
from .upload import ACCEPTED, FIELD, SLACK, UploadError, megabytes, receive_upload

logger = logging.getLogger("nasal.service")
STATIC = Path(__file__).resolve().parent / "static"
RESULT_NAME = re.compile(r"^[0-9a-f]{32}(\.json|_(overlay|region|heatmap|xray|crop|repaired)\.png)$")
REQUEST_ID = re.compile(r"^[0-9a-f]{32}")
# the bundle command's advice, as it applies to the service
BUNDLE_HINT = ("pass --allow_any_modality True to run it anyway", "this service assesses head radiographs only")
LINKED = ("overlay", "region_mask", "heatmap")  # the record's own file names, also given as links
# the viewer page and its files may load only what this service serves (and the pictures it draws)
PAGE_POLICY = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'"


@dataclass
class ServiceSettings:
    """What ``make serve`` can change (``python -m clinic.service --help``).

    Args:
        work_dir: the only folder the service writes to: ``uploads/`` and ``results/`` below it.
        models_dir: the trained weights (default: the bundle's ``models/``).
        device: torch device (default: the bundle config's, CUDA when available).
        max_upload_bytes: larger uploads are refused (413) as soon as their bytes pass it.
        retention_s: results (JSON and PNGs) are deleted this long after they were written; uploads at once.
        max_pending: requests allowed inside ``/predict`` at once (one runs, the others wait); more get 503.
        allow_any_modality: assess DICOM that is not a head radiograph (default: refused as "not assessed").
        overrides: further bundle config overrides by id (as ``--id value`` on the bundle command line).
    """

    work_dir: Path = REPO_ROOT / "runs" / "service"
    models_dir: Path | None = None
    device: str | None = None
    max_upload_bytes: int = 50_000_000
    retention_s: float = 3600.0
    max_pending: int = 4
    allow_any_modality: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir).resolve()
        if self.max_upload_bytes < 1 or self.max_pending < 1 or self.retention_s < 1:
            raise ValueError("max_upload_bytes and max_pending must be at least 1, retention_s at least 1 second")


def error(status: int, message: str, request_id: str | None = None, **headers: str) -> JSONResponse:
    """The service's one error shape: ``{"detail": one line, "request_id": ...}``."""
    return JSONResponse({"detail": message, "request_id": request_id}, status_code=status, headers=headers or None)


class Service:
    """The engine, the work folder, the one-at-a-time executor and the count of requests in ``/predict``."""

    def __init__(self, settings: ServiceSettings, engine: Any = None) -> None:
        self.settings = settings
        self.uploads = settings.work_dir / "uploads"
        self.results = settings.work_dir / "results"
        for folder in (self.uploads, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.uploads.iterdir():  # a crash can leave uploads behind: none is kept
            if leftover.is_file():
                leftover.unlink()
        if engine is None:
            from .engine import WarmInference

            engine = WarmInference(
                self.results,
                settings.models_dir,
                settings.device,
                allow_any_modality=settings.allow_any_modality,
                overrides=settings.overrides,
            )
        elif Path(engine.output_dir).resolve() != self.results:
            raise ValueError(f"the engine must write to the service's results folder {self.results}")
        self.engine = engine
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.pending = 0
        self.sweep()

    def sweep(self, now: float | None = None) -> int:
        """Delete results older than ``retention_s`` (and any upload left over); how many files were deleted."""
        now = time.time() if now is None else now
        retention, deleted = self.settings.retention_s, 0
        for folder in (self.results, self.uploads):
            for path in folder.iterdir():
                try:
                    if path.is_file() and REQUEST_ID.match(path.name) and now - path.stat().st_mtime >= retention:
                        path.unlink()
                        deleted += 1
                except FileNotFoundError:  # deleted meanwhile
                    continue
        return deleted

    async def sweeper(self) -> None:
        """Sweep every so often while the service runs (every minute; more often for a shorter retention)."""
        while True:
            await asyncio.sleep(min(60.0, max(1.0, self.settings.retention_s / 4)))
            self.sweep()

    def info(self) -> dict[str, Any]:
        """``GET /health``."""
        return {
            "status": "ok",
            "models_loaded": True,
            **self.engine.info(),
            "limits": {
                "max_upload_bytes": self.settings.max_upload_bytes,
                "accepted": ACCEPTED,
                "retention_s": self.settings.retention_s,
                "max_pending": self.settings.max_pending,
            },
            "pending": self.pending,
        }

    def assess(self, path: Path, request_id: str) -> dict[str, Any]:
        """Run one saved upload through the engine (in the executor's one thread); the upload is deleted after."""
        try:
            return self.engine.predict(path, stem=request_id, name=request_id, views=True)
        finally:
            path.unlink(missing_ok=True)

    def answer(self, record: dict[str, Any], request_id: str, seconds: float) -> dict[str, Any]:
        """The record with links to its files under ``/results/``."""
        answer = {k: v for k, v in record.items() if k != "views"}
        files = {"json": f"{request_id}.json"} | {k: record[k] for k in LINKED if k in record}
        files |= record.get("views", {})
        links = {kind: f"/results/{name}" for kind, name in files.items() if (self.results / name).is_file()}
        return {**answer, "request_id": request_id, "links": links, "seconds": round(seconds, 4)}

    async def predict(self, request: Request) -> Response:
        """``POST /predict``: receive, assess, answer; every failure is one line with its HTTP status."""
        if self.pending >= self.settings.max_pending:
            message = f"busy: {self.pending} requests are being assessed or waiting; try again in a few seconds"
            return error(503, message, None, **{"Retry-After": "2"})
        self.pending += 1
        request_id = uuid.uuid4().hex
        start = time.perf_counter()
        try:
            return await self._predict(request, request_id, start)
        except Exception as err:  # nothing a request does may stop the service
            logger.exception("request %s: %s", request_id, type(err).__name__)
            return error(500, f"the service failed on this request ({type(err).__name__}); it is still running")
        finally:
            self.pending -= 1

    async def _predict(self, request: Request, request_id: str, start: float) -> Response:
        limit = self.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + SLACK:  # more than the file plus its headers
            logger.info("request %s: refused, %s declared", request_id, megabytes(int(declared)))
            return error(
                413, f"file too large: {megabytes(int(declared))}; the limit is {megabytes(limit)}", request_id
            )
        try:
            body = request.stream()
            content_type = request.headers.get("content-type", "")
            path, size = await receive_upload(content_type, body, self.uploads, request_id, limit)
        except UploadError as err:
            logger.info("request %s: refused (%d: %s)", request_id, err.status, err.message)
            return error(err.status, err.message, request_id)
        loop = asyncio.get_running_loop()
        record = await loop.run_in_executor(self.executor, self.assess, path, request_id)
        seconds = time.perf_counter() - start
        if "error" in record:
            message = str(record["error"]).removeprefix(f"{request_id}: ").replace(*BUNDLE_HINT)
            logger.info(
                "request %s: %s %s not assessed in %.0f ms", request_id, path.suffix, megabytes(size), 1e3 * seconds
            )
            return error(422, message, request_id)
        probability = record.get("fracture_probability")
        shown = "-" if probability is None else f"{probability:.3f}"
        logger.info(
            "request %s: %s %s -> %s (p=%s) in %.0f ms",
            *(request_id, path.suffix, megabytes(size), record.get("finding"), shown, 1e3 * seconds),
        )
        return JSONResponse(self.answer(record, request_id, seconds))

    def result(self, name: str) -> Response:
        """``GET /results/{name}``: one of a request's files while it is kept."""
        path = self.results / name
        if not RESULT_NAME.match(name) or not path.is_file():
            minutes = self.settings.retention_s / 60
            return error(404, f"no such result: unknown, or deleted (results are kept {minutes:g} minutes)")
        media = "application/json" if name.endswith(".json") else "image/png"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-store"})


PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FIELD],
                "properties": {FIELD: {"type": "string", "format": "binary", "description": ACCEPTED}},
            }
        }
    },
}
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The per-image JSON of the inference command, with `request_id`, `links` and `seconds`"},
    400: {"description": "No file, an empty file or a body that is not multipart/form-data"},
    413: {"description": "The file is larger than the upload limit"},
    415: {"description": "Not a DICOM, PNG, JPEG or NIfTI file"},
    422: {"description": "The file could not be read or assessed (e.g. a CT, not a head radiograph)"},
    503: {"description": "Busy: too many requests waiting; retry after a few seconds"},
}


def create_app(settings: ServiceSettings | None = None, engine: Any = None) -> FastAPI:
    """The FastAPI application; ``engine`` (a ``WarmInference`` writing to ``<work_dir>/results``) or one is built."""
    service = Service(settings or ServiceSettings(), engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(service.sweeper())
        try:
            yield
        finally:
            task.cancel()
            service.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPIOffline(
        title="Nasal bone fracture service",
        version=service.engine.version,
        description="Nasal bone fracture detection on lateral head X-rays. Research use only - not a diagnosis.",
        lifespan=lifespan,
        static_url="/static-docs",
    )
    app.state.service = service

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.url.path == "/" or request.url.path.startswith("/static/"):
            response.headers["Content-Security-Policy"] = PAGE_POLICY
        return response

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", summary="Models loaded, bundle version, device, operating points and limits")
    def health() -> dict[str, Any]:
        return service.info()

    @app.post(
        "/predict",
        summary="Assess one head X-ray (multipart field `file`)",
        openapi_extra={"requestBody": PREDICT_BODY},
        responses=PREDICT_RESPONSES,
    )
    async def predict(request: Request) -> Response:
        return await service.predict(request)

    @app.get("/results/{name}", summary="A request's JSON or picture, while it is kept")
    def result(name: str) -> Response:
        return service.result(name)

    return app


@contextmanager
def running(app: FastAPI, timeout: float = 60.0) -> Iterator[str]:
    """``app`` served by uvicorn in a thread of this process on a free loopback port (for the benchmark and the
    browser test); its base URL, ``http://127.0.0.1:<port>``. The server stops when the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def _override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (VALUE as JSON when it parses, else the text) for ``--set``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: list[str] | None = None) -> tuple[str, int, ServiceSettings]:
    """Host, port and settings from the command line."""
    p = argparse.ArgumentParser(prog="python -m clinic.service", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--work-dir", type=Path, default=ServiceSettings.work_dir, help="the only folder written to")
    p.add_argument("--models-dir", type=Path, default=None, help="trained weights (default: bundle/models)")
    p.add_argument("--device", default=None, help="torch device (default: CUDA when available, else CPU)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="larger uploads are refused")
    p.add_argument("--retention-minutes", type=float, default=60.0, help="results are deleted after this")
    p.add_argument("--max-pending", type=int, default=4, help="requests in /predict at once; more get 503")
    p.add_argument("--allow-any-modality", action="store_true", help="assess DICOM that is not a head radiograph")
    p.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="a bundle config override by id, e.g. max_pixels=20000000")  # fmt: skip
    a = p.parse_args(argv)
    settings = ServiceSettings(
        work_dir=a.work_dir,
        models_dir=a.models_dir,
        device=a.device,
        max_upload_bytes=int(a.max_upload_mb * 1e6),
        retention_s=a.retention_minutes * 60,
        max_pending=a.max_pending,
        allow_any_modality=a.allow_any_modality,
        overrides=dict(a.set),
    )
    return a.host, a.port, settings


def main(argv: list[str] | None = None) -> None:
    """``make serve``: build the engine (the port opens once the models are loaded), then serve until Ctrl-C."""
    import uvicorn

    host, port, settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)
    logger.info("loading the models (work folder %s)", settings.work_dir)
    app = create_app(settings)
    logger.info("viewer page: http://%s:%d/  (API: /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=64, timeout_keep_alive=5)


if __name__ == "__main__":
    main()
