"""Reading what a client uploads, within bounds, and decoding it off the event loop.

Two ways to send pictures: a multipart form (field `file`, or `files` for several), as browsers and
`curl -F` send them, or the picture itself as the body with `Content-Type: image/...` (`curl
--data-binary @cat.jpg -H 'Content-Type: image/jpeg'`), which skips multipart parsing altogether. Every
refusal is a `Rejected` with its status code and one line.
"""
from __future__ import annotations

import asyncio
import io
from concurrent.futures import Executor
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from ..data.decode import DecodeError, TooManyPixels

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a 10 MB PNG can promise ~90 megapixels (~270 MB decoded)
MAX_FILES = 32
FORM_OVERHEAD = 4096  # multipart headers and boundaries around the picture's bytes


class Rejected(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    max_files: int = MAX_FILES


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit`: a lying Content-Length cannot
    exhaust memory."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, f"upload of {int(declared)} bytes; the limit is {limit - FORM_OVERHEAD} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Rejected(413, f"upload over the limit of {limit - FORM_OVERHEAD} bytes")
    return bytes(body)


def _is_raw_picture(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind.startswith("image/") or kind == "application/octet-stream"


async def read_uploads(request: Request, limits: Limits, field: str) -> list[Upload]:
    """The pictures of a request: the body itself (an image/* or octet-stream body; named by the
    `filename` query parameter), or the multipart form's `field` entries."""
    body = await read_body(request, limits.max_bytes + FORM_OVERHEAD)
    if _is_raw_picture(request):
        if len(body) > limits.max_bytes:
            raise Rejected(413, f"picture of {len(body)} bytes; the limit is {limits.max_bytes} bytes")
        return [Upload(request.query_params.get("filename", "upload"), body)]

    async def replay():
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=limits.max_files + 1)
    parser.spool_max_size = len(body) + 1  # keep the upload in memory: never on disk
    expected = (f"expected a multipart form with the picture in field 'file' (or at most {limits.max_files} pictures "
                "in fields 'files'), or the picture as the body with Content-Type: image/...")
    try:
        form = await parser.parse()
    except Exception:  # malformed multipart, not multipart at all, or too many files
        raise Rejected(400, expected) from None
    files = [u for u in form.getlist(field) if isinstance(u, UploadFile)]
    if not files:
        raise Rejected(400, expected)
    uploads = []
    for file in files:
        data = await file.read()
        if len(data) > limits.max_bytes:
            raise Rejected(413, f"picture of {len(data)} bytes; the limit is {limits.max_bytes} bytes")
        uploads.append(Upload(file.filename or "upload", data))
    return uploads


async def decode_upload(upload: Upload, decode, pool: Executor, max_pixels: int):
    """`decode(file, max_pixels)` in the decoding pool; 413 for a picture whose header promises too many
    pixels, 415 for a file that is not a picture."""
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, decode, io.BytesIO(upload.data), max_pixels)
    except TooManyPixels as error:
        raise Rejected(413, f"{upload.filename}: {error}") from None
    except DecodeError as error:
        raise Rejected(415, f"{upload.filename}: not a picture imgcls can read: {error}") from None
