"""`imgcls serve`: a web page to try a saved run, and a JSON endpoint. Uploads stay in memory.

Binds to 127.0.0.1 unless told otherwise; rejects bodies over `max_bytes` (413) and files that are
not pictures (415) with a one-line reason; `POST /predict` takes the picture as multipart field `file`.
"""
import io
import logging
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.formparsers import MultiPartParser

from .data.decode import DecodeError, decode_image
from .predict import load_run, predict_arrays

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024
PAGE = (Path(__file__).parent / "report" / "serve.html").read_text(encoding="utf-8")


def create_app(run_dir: str | Path, *, max_bytes: int = MAX_BYTES, top_k: int = 5, device: str = "auto") -> FastAPI:
    """A FastAPI app around one loaded run (fastapi is imported only by `imgcls serve`)."""
    run = load_run(run_dir, device)
    meta = run.meta
    app = FastAPI(title="imgcls", docs_url=None, redoc_url=None)

    def reject(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (PAGE.replace("{{architecture}}", meta["architecture"]).replace("{{classes}}", str(len(meta["classes"])))
                .replace("{{max_mb}}", f"{max_bytes / 2**20:.0f}"))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "classes": len(meta["classes"]), "architecture": meta["architecture"]}

    @app.post("/predict")
    async def predict(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes + 4096:
            return reject(413, f"upload of {int(declared)} bytes; the limit is {max_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():  # bounded read: a lying Content-Length cannot exhaust memory
            body += chunk
            if len(body) > max_bytes + 4096:
                return reject(413, f"upload over the limit of {max_bytes} bytes")

        async def replay():
            yield bytes(body)

        parser = MultiPartParser(request.headers, replay())
        parser.spool_max_size = len(body) + 1  # keep the upload in memory: never on disk
        try:
            form = await parser.parse()
        except Exception:  # malformed multipart, or not multipart at all
            return reject(400, "expected a multipart form with the picture in field 'file'")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return reject(400, "expected a multipart form with the picture in field 'file'")
        data = await upload.read()
        if len(data) > max_bytes:
            return reject(413, f"picture of {len(data)} bytes; the limit is {max_bytes} bytes")
        try:
            array = decode_image(io.BytesIO(data), meta["channels"], meta["input_size"],
                                 trim=meta.get("trim_borders", False))
        except DecodeError as error:
            return reject(415, f"not a picture imgcls can read: {error}")
        probs = predict_arrays(run, array[None])[0]
        order = np.argsort(-probs)[:top_k]
        return {"filename": upload.filename,
                "top": [{"class": meta["classes"][i], "probability": round(float(probs[i]), 6)} for i in order]}

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, max_bytes: int = MAX_BYTES) -> None:
    import uvicorn

    app = create_app(run_dir, max_bytes=max_bytes)
    log.info("serving %s on http://%s:%d", run_dir, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
