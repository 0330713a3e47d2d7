"""The `imgcls serve` app: a web page to try a saved run, JSON endpoints, and what running it behind a load
balancer needs (health probes, metrics, keys, hot reload). Uploads stay in memory.

Pictures are decoded in a pool of one thread per core and classified by one model worker thread that
batches concurrent requests (batcher.py), so the event loop, the page and the probes never wait for the
model. Every rejection is one line of JSON: 401 without the key (when the server has one), 413 for a
body over `max_bytes` or a picture whose header promises more than `max_pixels` (refused before
decoding), 415 for a file that is not a picture, 400 for a form without `file`, 503 with Retry-After
when `max_pending` pictures are already waiting or the model is not loaded yet.

    GET  /health/live            200 while the process answers (503 once loading the model has failed)
    GET  /health/ready           200 once the model is loaded and warmed; 503 while loading or stopping
    GET  /health                 ready's status with the model's details
    GET  /metrics                Prometheus metrics (metrics.py)
    POST /predict?top_k=5        one picture: multipart field `file`, or the body itself (Content-Type: image/...)
    POST /predict?explain=1      ... and where the model looked: Grad-CAM over the picture (PyTorch, any backend)
    POST /predict/batch?top_k=5  multipart fields `files`: several pictures (at most `max_files`)
    POST /admin/reload           load the run folder's new weights (or {"run": "other/run"}), then swap

Every answer names the model `version` (artifact.files.run_version) that gave it.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from markupsafe import escape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import UserError, first_line
from ..openset.decide import UNKNOWN, unknown
from .batcher import Saturated
from .models import Loaded, Models, NotReady, check_run_dir
from .telemetry import Observe, Telemetry
from .uploads import MAX_BYTES, MAX_FILES, MAX_PIXELS, Limits, Rejected, decode_upload, read_body, read_uploads

PAGE = (Path(__file__).parents[1] / "report" / "serve.html").read_text(encoding="utf-8")


def create_app(run_dir: str | Path, *, max_bytes: int = MAX_BYTES, top_k: int = 5, device: str = "auto",
               backend: str = "auto", max_batch: int | None = None, max_wait_ms: float = 5.0, max_pending: int = 64,
               max_pixels: int = MAX_PIXELS, max_files: int = MAX_FILES, api_key: str | None = None,
               cors_origins: tuple[str, ...] | list[str] = (), log_format: str = "text",
               load_in_background: bool = False) -> Starlette:
    """A Starlette app around one run folder (starlette is imported only by `imgcls serve`).
    max_batch=1 turns micro-batching off; None chooses the ceiling by timing batches (models.choose_max_batch).
    api_key: prediction and admin endpoints require `Authorization: Bearer <key>` (probes and metrics stay
    open). load_in_background: the app answers /health/live at once and /health/ready once the model is
    loaded and warmed (what `imgcls serve` does); otherwise the model is loaded before this returns."""
    from ..artifact.ensemble import ensemble_card
    from ..predict import load_model, load_run

    first_card = ensemble_card(check_run_dir(run_dir))  # a folder that is no run ends here, in one line
    telemetry = Telemetry(queue_depth=lambda: models.current.batcher.pending if models.current else 0)
    models = Models(run_dir, lambda folder: load_model(folder, device, backend), max_batch=max_batch,
                    max_wait_ms=max_wait_ms, max_pending=max_pending, on_batch=telemetry.batch_size.observe)
    telemetry.ready.set_function(lambda: 1.0 if models.ready else 0.0)
    limits = Limits(max_bytes, max_pixels, max_files)
    key = api_key.encode() if api_key else None
    decode_pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="imgcls-decode")

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if load_in_background:
            threading.Thread(target=_load_quietly, args=(models,), name="imgcls-load", daemon=True).start()
        yield
        models.close()
        decode_pool.shutdown(wait=False)

    if not load_in_background:
        models.load()

    async def rejected(request: Request, error: Rejected) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status, headers=error.headers)

    def authorize(request: Request) -> None:
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise Rejected(401, "expected the header Authorization: Bearer <key> (the key the server was started "
                                "with: --api-key or IMGCLS_API_KEY)", {"WWW-Authenticate": "Bearer"})

    @contextmanager
    def held():
        try:
            with models.hold() as loaded:
                yield loaded
        except NotReady as error:
            raise Rejected(503, f"not ready: {error}", {"Retry-After": "1"}) from None

    async def page(request: Request) -> HTMLResponse:
        card = models.current.card if models.current else first_card
        return HTMLResponse(PAGE.replace("{{architecture}}", str(escape(card.architecture)))
                            .replace("{{classes}}", str(card.num_classes))
                            .replace("{{max_mb}}", f"{max_bytes / 2**20:.0f}")
                            .replace("{{key_display}}", "inline" if key else "none"))

    # The probes are async and wait for nothing: answered on the event loop, never behind the model.
    async def live(request: Request) -> JSONResponse:
        if models.state == "failed":
            return JSONResponse({"status": "failed", "detail": models.error}, status_code=503)
        return JSONResponse({"status": "alive"})

    async def ready(request: Request) -> JSONResponse:
        if models.ready:
            return JSONResponse({"status": "ready", "version": models.current.version})
        return _not_ready(models)

    async def health(request: Request) -> JSONResponse:
        if not models.ready:
            return _not_ready(models)
        m = models.current
        return JSONResponse({"status": "ok", "classes": m.card.num_classes, "architecture": m.card.architecture,
                             "task": m.card.task, "backend": m.run.backend, "version": m.version,
                             "pending": m.batcher.pending, "max_batch": m.batcher.max_batch})

    async def metrics(request: Request) -> Response:
        if models.current is not None:
            m = models.current
            telemetry.serving(m.version, m.card.architecture, m.run.backend)
        body, kind = telemetry.exposition()
        return Response(body, media_type=kind)

    async def classify(loaded: Loaded, pictures):
        try:
            return await loaded.batcher.submit(pictures)
        except Saturated as error:
            raise Rejected(503, f"busy: {error}; retry in a second", {"Retry-After": "1"}) from None

    def answer(loaded: Loaded, answers, k: int) -> dict:
        """One picture's answer: the task's (the top classes; for several labels, those above their
        thresholds), then where the run has them its out-of-distribution score (class "unknown" above the
        threshold) and its conformal set."""
        card, task = loaded.card, loaded.run.task
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
    explainers: dict = {}  # version → a copy of the model, built on first use: hooks must not touch the batcher's

    def heatmap(loaded: Loaded, picture, geometry, data: bytes) -> dict:
        import copy

        from ..data.decode import open_picture
        from ..explain import explain_arrays, overlay_on_picture, png_bytes
        from ..gradcam import default_layers

        card = loaded.card
        with explain_lock:
            if loaded.version not in explainers:  # Grad-CAM needs PyTorch's gradients, whichever backend answers
                model = (copy.deepcopy(loaded.run.model) if loaded.run.backend == "torch"
                         else load_run(loaded.run_dir, device, "torch").model).requires_grad_(False)
                explainers.clear()  # only the model being served is kept
                explainers[loaded.version] = (model, default_layers(model, card.preprocess.channels,
                                                                    card.preprocess.size))
            model, layers = explainers[loaded.version]
            [[e]] = explain_arrays(model, card, picture[None], [geometry], layers)
        overlay = overlay_on_picture(open_picture(io.BytesIO(data), max_pixels=max_pixels), e.heatmap, geometry,
                                     mark=e.peak)
        return {"class": card.classes[e.target], "method": e.method, "layers": layers,
                "peak": [round(e.peak[0], 1), round(e.peak[1], 1)],
                "overlay": "data:image/png;base64," + base64.b64encode(png_bytes(overlay)).decode("ascii")}

    def top_k_of(request: Request) -> int:
        text = request.query_params.get("top_k")
        if text is None:
            return top_k
        if not text.isdigit():
            raise Rejected(400, f"top_k={text!r}; expected a whole number such as 5")
        return int(text)

    # Plain Starlette endpoints: FastAPI's parameter validation, response encoding and routing cost about
    # 0.4 ms a request, a third of what a 28 px model's request may cost at 1,000 requests/s on 2 cores.
    async def predict(request: Request) -> JSONResponse:
        authorize(request)
        k = top_k_of(request)
        explain = request.query_params.get("explain", "").lower() in ("1", "true", "yes", "on")
        with held() as loaded:
            if explain and not loaded.run.explainable:
                raise Rejected(400, "explain=1 for an ensemble; Grad-CAM explains one network: serve one member's "
                                    "folder to see where it looks")
            with loaded.batcher.arriving():
                [upload, *_] = await read_uploads(request, limits, "file")
                decode = loaded.card.preprocess.decode_with_geometry if explain else loaded.run.decode
                decoded = await decode_upload(upload, decode, decode_pool, max_pixels)
            picture, geometry = decoded if explain else (decoded, None)
            result = {"filename": upload.filename, "version": loaded.version,
                      **answer(loaded, await classify(loaded, picture[None]), k)}
            if explain:
                result["explain"] = await asyncio.to_thread(heatmap, loaded, picture, geometry, upload.data)
        return JSONResponse(result)

    async def predict_batch(request: Request) -> JSONResponse:
        import numpy as np

        authorize(request)
        k = top_k_of(request)
        with held() as loaded:
            with loaded.batcher.arriving():
                uploads = await read_uploads(request, limits, "files")
                if len(uploads) > max_files:
                    raise Rejected(400, f"expected 1 to {max_files} pictures in multipart fields 'files'; "
                                        f"got {len(uploads)}")
                pictures = np.stack([await decode_upload(u, loaded.run.decode, decode_pool, max_pixels)
                                     for u in uploads])
            answers = await classify(loaded, pictures)
            return JSONResponse({"version": loaded.version,
                                 "results": [{"filename": u.filename, **answer(loaded, answers[i:i + 1], k)}
                                             for i, u in enumerate(uploads)]})

    async def reload(request: Request) -> JSONResponse:
        if key is None:
            raise Rejected(403, "reloading over HTTP needs a key: start imgcls serve with --api-key (or "
                                "IMGCLS_API_KEY), or send the process SIGHUP")
        authorize(request)
        body = await read_body(request, 4096)
        try:
            asked = json.loads(body) if body.strip() else {}
            run = asked.get("run") if isinstance(asked, dict) else None
            if not isinstance(asked, dict) or not isinstance(run, (str, type(None))):
                raise ValueError
        except ValueError:
            raise Rejected(400, 'expected no body, or JSON {"run": "path/to/run"}') from None
        start = time.perf_counter()
        try:
            new, old = await asyncio.to_thread(models.reload, run)
        except NotReady as error:
            raise Rejected(503, f"not ready: {error}", {"Retry-After": "1"}) from None
        except Exception as error:  # a run folder that does not load: the old model keeps answering
            telemetry.reloads.labels("failed").inc()
            status = 400 if isinstance(error, (UserError, OSError)) else 500
            raise Rejected(status, f"reload failed, still serving {models.current.version}: {first_line(error)}") from None
        telemetry.reloads.labels("ok").inc()
        return JSONResponse({"version": new.version, "previous": old.version, "run_dir": str(new.run_dir),
                             "seconds": round(time.perf_counter() - start, 3)})

    routes = [Route("/", page), Route("/health/live", live), Route("/health/ready", ready), Route("/health", health),
              Route("/metrics", metrics), Route("/predict", predict, methods=["POST"]),
              Route("/predict/batch", predict_batch, methods=["POST"]),
              Route("/admin/reload", reload, methods=["POST"])]
    middleware = [Middleware(Observe, telemetry=telemetry, paths={r.endpoint: r.path for r in routes},
                             log_format=log_format, version=lambda: models.current.version if models.current else "-")]
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={Rejected: rejected}, lifespan=lifespan)
    app.state.models, app.state.telemetry = models, telemetry
    return app


def _not_ready(models: Models) -> JSONResponse:
    body = {"status": models.state}
    if models.error:
        body["detail"] = models.error
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


def _load_quietly(models: Models) -> None:
    try:
        models.load()
    except Exception:  # logged by load; /health/live now answers 503 with the reason
        pass
