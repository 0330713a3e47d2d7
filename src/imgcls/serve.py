"""`imgcls serve`: a web page to try a saved run, and JSON endpoints. Uploads stay in memory.

Binds to 127.0.0.1 unless told otherwise. Pictures are decoded in a pool of one thread per core and
classified by one model worker thread that batches concurrent requests (batcher.py), so the event loop, the page and
/health never wait for the model. Every rejection is one line of JSON: 413 for a body over `max_bytes`
or a picture whose header promises more than `max_pixels` (refused before decoding), 415 for a file
that is not a picture, 400 for a form without `file`, 503 with Retry-After when `max_pending`
pictures are already waiting.

    POST /predict?top_k=5        multipart field `file`: one picture
    POST /predict?explain=1      ... and where the model looked: Grad-CAM over the picture (PyTorch, any backend)
    POST /predict/batch?top_k=5  multipart fields `files`: several pictures (at most `max_files`)
"""
import asyncio
import base64
import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from .batcher import MicroBatcher, Saturated
from .data.decode import DecodeError, TooManyPixels, open_picture
from .openset.decide import UNKNOWN, unknown
from .predict import load_run

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a 10 MB PNG can promise ~90 megapixels (~270 MB decoded)
MAX_FILES = 32
PAGE = (Path(__file__).parent / "report" / "serve.html").read_text(encoding="utf-8")


class Rejected(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def create_app(run_dir: str | Path, *, max_bytes: int = MAX_BYTES, top_k: int = 5, device: str = "auto",
               backend: str = "auto", max_batch: int = 16, max_wait_ms: float = 5.0, max_pending: int = 64,
               max_pixels: int = MAX_PIXELS, max_files: int = MAX_FILES) -> FastAPI:
    """A FastAPI app around one loaded run (fastapi is imported only by `imgcls serve`).
    max_batch=1 turns micro-batching off (one request per model call)."""
    run = load_run(run_dir, device, backend)
    card, task = run.card, run.task
    batcher = MicroBatcher(run.answers, max_batch=max_batch,
                           max_wait_ms=max_wait_ms, max_pending=max_pending)
    decode_pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="imgcls-decode")
    app = FastAPI(title="imgcls", docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.router.on_shutdown.append(batcher.close)
    app.router.on_shutdown.append(lambda: decode_pool.shutdown(wait=False))

    @app.exception_handler(Rejected)
    async def rejected(request: Request, error: Rejected) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status, headers=error.headers)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (PAGE.replace("{{architecture}}", card.architecture).replace("{{classes}}", str(card.num_classes))
                .replace("{{max_mb}}", f"{max_bytes / 2**20:.0f}"))

    @app.get("/health")
    async def health() -> dict:  # async: answered on the event loop, never behind the model
        return {"status": "ok", "classes": card.num_classes, "architecture": card.architecture, "task": card.task,
                "backend": run.backend, "pending": batcher.pending}

    async def form_of(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes + 4096:
            raise Rejected(413, f"upload of {int(declared)} bytes; the limit is {max_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():  # bounded read: a lying Content-Length cannot exhaust memory
            body += chunk
            if len(body) > max_bytes + 4096:
                raise Rejected(413, f"upload over the limit of {max_bytes} bytes")

        async def replay():
            yield bytes(body)

        parser = MultiPartParser(request.headers, replay(), max_files=max_files + 1)
        parser.spool_max_size = len(body) + 1  # keep the upload in memory: never on disk
        try:
            return await parser.parse()
        except Exception:  # malformed multipart, not multipart at all, or too many files
            raise Rejected(400, f"expected a multipart form with the picture in field 'file' (or at most "
                                f"{max_files} pictures in fields 'files')") from None

    async def decoded(upload: UploadFile, decode=card.preprocess.decode):
        data = await upload.read()
        if len(data) > max_bytes:
            raise Rejected(413, f"picture of {len(data)} bytes; the limit is {max_bytes} bytes")
        try:
            # A pool of one thread per core: more concurrent decodes would only fight the model for the CPU.
            return await asyncio.get_running_loop().run_in_executor(decode_pool, decode, io.BytesIO(data), max_pixels)
        except TooManyPixels as error:
            raise Rejected(413, f"{upload.filename}: {error}") from None
        except DecodeError as error:
            raise Rejected(415, f"{upload.filename}: not a picture imgcls can read: {error}") from None

    async def classify(pictures: np.ndarray) -> np.ndarray:
        try:
            return await batcher.submit(pictures)
        except Saturated as error:
            raise Rejected(503, f"busy: {error}; retry in a second", {"Retry-After": "1"}) from None

    def answer(answers, k: int) -> dict:
        """One picture's answer: the task's (the top classes; for several labels, those above their
        thresholds), then where the run has them its out-of-distribution score (class "unknown" above the
        threshold) and its conformal set."""
        result = task.answer(answers.probs[0], card.classes, card, max(1, k))
        decided = task.decide(answers.probs, card)
        if decided.ndim == 1:
            result = {"class": card.classes[int(decided[0])], **result}
        if answers.ood is not None:
            outside = bool(unknown(card, decided, answers.ood)[0])
            if "class" in result and outside:
                result["class"] = UNKNOWN
            result.update(unknown=outside, ood_score=round(float(answers.ood[0]), 6))
        if answers.sets is not None:
            result["set"] = [c for c, chosen in zip(card.classes, answers.sets[0]) if chosen]
        return result

    explain_lock = threading.Lock()  # Grad-CAM hooks its model: one explanation at a time
    explainer: dict = {}  # a copy of the model, built on first use: hooks must not touch the batcher's

    def heatmap(picture: np.ndarray, geometry, data: bytes) -> dict:
        import copy

        from .explain import explain_arrays, overlay_on_picture, png_bytes
        from .gradcam import default_layers

        with explain_lock:
            if not explainer:  # Grad-CAM needs PyTorch's gradients, whichever backend answers the rest
                model = (copy.deepcopy(run.model) if run.backend == "torch"
                         else load_run(run.run_dir, device, "torch").model).requires_grad_(False)
                explainer.update(model=model, layers=default_layers(model, card.preprocess.channels,
                                                                    card.preprocess.size))
            layers = explainer["layers"]
            [[e]] = explain_arrays(explainer["model"], card, picture[None], [geometry], layers)
        overlay = overlay_on_picture(open_picture(io.BytesIO(data), max_pixels=max_pixels), e.heatmap, geometry,
                                     mark=e.peak)
        return {"class": card.classes[e.target], "method": e.method, "layers": layers,
                "peak": [round(e.peak[0], 1), round(e.peak[1], 1)],
                "overlay": "data:image/png;base64," + base64.b64encode(png_bytes(overlay)).decode("ascii")}

    @app.post("/predict")
    async def predict(request: Request, top_k: int = top_k, explain: bool = False):
        with batcher.arriving():
            form = await form_of(request)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise Rejected(400, "expected a multipart form with the picture in field 'file'")
            picture, geometry = (await decoded(upload, card.preprocess.decode_with_geometry) if explain
                                 else (await decoded(upload), None))
        result = {"filename": upload.filename, **answer(await classify(picture[None]), top_k)}
        if explain:
            await upload.seek(0)
            result["explain"] = await asyncio.to_thread(heatmap, picture, geometry, await upload.read())
        return result

    @app.post("/predict/batch")
    async def predict_batch(request: Request, top_k: int = top_k):
        with batcher.arriving():
            form = await form_of(request)
            uploads = [u for u in form.getlist("files") if isinstance(u, UploadFile)]
            if not uploads or len(uploads) > max_files:
                raise Rejected(400, f"expected 1 to {max_files} pictures in multipart fields 'files'; "
                                    f"got {len(uploads)}")
            pictures = np.stack([await decoded(u) for u in uploads])
        answers = await classify(pictures)
        return {"results": [{"filename": u.filename, **answer(answers[i:i + 1], top_k)} for i, u in enumerate(uploads)]}

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, max_bytes: int = MAX_BYTES,
          **options) -> None:
    """Run the app with uvicorn; `options` are create_app's (backend, max_batch, max_wait_ms, ...)."""
    import uvicorn

    app = create_app(run_dir, max_bytes=max_bytes, **options)
    log.info("serving %s on http://%s:%d (%s backend, batches of up to %d within %g ms)", run_dir, host, port,
             options.get("backend", "torch"), app.state.batcher.max_batch,
             app.state.batcher.max_wait * 1000)
    uvicorn.run(app, host=host, port=port, log_level="warning")
