"""Decode one picture file into a fixed-size uint8 array, or say exactly why it cannot be read.

Every colour mode (grey, RGB, RGBA, palette, CMYK, 16-bit) is converted the same way, EXIF orientation
is applied, and a picture whose header promises more pixels than Pillow's MAX_IMAGE_PIXELS is refused
before it is decoded (a decompression bomb), rather than decoded as a risk taken.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections import deque
from dataclasses import dataclass
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from itertools import islice
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageOps

from .. import stopping
from ..choices import RESIZES
from .archives import picture_file


class DecodeError(Exception):
    """The file is not a picture we can read; the message is the reason recorded in data.json."""


class TooManyPixels(DecodeError):
    """The header promises more pixels than allowed (a decompression bomb, or just too large)."""


def _to_8bit(img: Image.Image) -> Image.Image:
    # 16- and 32-bit greyscale (I;16, I, F) would be clipped by convert("L"): rescale instead.
    array = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
    return Image.fromarray(np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8), "L")


def _convert(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white, as a viewer shows them, rather than whatever colour they hide.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def border_box(img: Image.Image, min_fraction: float = 0.05) -> tuple[int, int, int, int] | None:
    """The crop box (left, top, right, bottom) that removes uniform white or black margins, or None.

    A margin row or column is one whose pixels are at least 98 % near-white (>= 240) or near-black
    (<= 15); the box is found on a thumbnail (fast) and scaled back. None when the margins cover less
    than `min_fraction` of the picture or would leave less than a quarter of either side.
    """
    thumb = img.convert("L")
    thumb.thumbnail((256, 256))
    grey = np.asarray(thumb, dtype=np.uint8)
    h, w = grey.shape
    best = None
    for margin in (grey >= 240, grey <= 15):
        rows, cols = margin.mean(1) >= 0.98, margin.mean(0) >= 0.98
        if rows.all() or cols.all():
            continue  # a blank picture: nothing to keep, so no box
        top, bottom = int(np.argmin(rows)), h - int(np.argmin(rows[::-1]))
        left, right = int(np.argmin(cols)), w - int(np.argmin(cols[::-1]))
        kept = (bottom - top) * (right - left) / (h * w)
        if (best is None or kept < best[0]) and kept <= 1 - min_fraction:
            best = (kept, (left, top, right, bottom))
    if best is None:
        return None
    left, top, right, bottom = best[1]
    if (right - left) < w / 4 or (bottom - top) < h / 4:
        return None
    sx, sy = img.width / w, img.height / h
    return (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))


def max_pixels() -> int:
    """The largest picture decoded: Pillow's MAX_IMAGE_PIXELS (89.5 megapixels unless the user changed it)."""
    return int(Image.MAX_IMAGE_PIXELS or 2**62)


def check_pixel_count(size: tuple[int, int], limit: int | None = None) -> None:
    """Refuse a picture whose header promises more than max_pixels(), before a byte of it is decoded.

    An explicit check rather than Pillow's DecompressionBombWarning turned into an error: that needs
    warnings.catch_warnings, which is not thread-safe, and decoding runs in thread pools."""
    width, height = size
    limit = min(limit or max_pixels(), max_pixels())
    if width * height > limit:
        raise TooManyPixels(f"too large to decode safely ({width}x{height} = {width * height:,} pixels; "
                            f"the limit is {limit:,})")


def open_picture(path: str | BinaryIO, draft: tuple[str, int] | None = None,
                 max_pixels: int | None = None) -> Image.Image:
    """Open, fully load and EXIF-orient one picture; every failure becomes a DecodeError with its reason.

    draft=(mode, size) lets a JPEG decode at a reduced scale no smaller than size (much faster).
    """
    try:
        with Image.open(picture_file(path)) as img:  # reads the header only
            check_pixel_count(img.size, max_pixels)
            if draft is not None and img.format == "JPEG":
                img.draft(draft[0], (draft[1], draft[1]))
            img.load()
            return ImageOps.exif_transpose(img)  # a loaded copy: outlives the file handle
    except DecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise DecodeError(f"too large to decode safely ({error})") from None
    except FileNotFoundError:
        raise DecodeError("file not found (moved, deleted or a broken link)") from None
    except Exception as error:  # Pillow raises many types for broken files; each is a reason, not a crash
        raise DecodeError(_reason(error, path)) from None


def _reason(error: Exception, path: str | BinaryIO) -> str:
    if isinstance(error, Image.UnidentifiedImageError):
        return "not a picture Pillow can identify"
    message = str(error) or type(error).__name__
    if isinstance(path, str):
        message = message.replace(path, "")
    return message.strip(" :'") or type(error).__name__


def decode_image(path: str | BinaryIO, channels: int, size: int | None, trim: bool = False,
                 max_pixels: int | None = None, resize: str = "squash", crop: float = 1.0) -> np.ndarray:
    """Read `path` as a (channels, size, size) uint8 array; `size=None` keeps the picture's own size.

    trim=True crops uniform white/black margins first (border_box), as `train --clean` and every
    later evaluate/predict of such a run do. max_pixels lowers the pixel limit (TooManyPixels).
    resize: squash, crop or pad (_square) a picture that is not square; with crop, `crop` < 1 keeps that
    fraction of the short side (timm's crop_pct: 0.875 at 224 px resizes the short side to 256).
    """
    img = open_picture(path, draft=("L" if channels == 1 else "RGB", size) if size is not None else None,
                       max_pixels=max_pixels)
    return _to_array(img, path, channels, size, trim, resize, crop)[0]


@dataclass(frozen=True)
class Geometry:
    """Where the model's square input sits in the picture: the picture's own size (EXIF-oriented)
    and the region that became the input (the trim box, the centre crop or the letterbox around the
    picture, else the whole picture), in its pixels."""

    width: int
    height: int
    box: tuple[float, float, float, float]  # left, top, right, bottom

    def to_picture(self, x: float, y: float, size: int) -> tuple[float, float]:
        """An input pixel's centre (x, y) of a size x size input → the picture's pixel coordinates."""
        left, top, right, bottom = self.box
        return left + (x + 0.5) * (right - left) / size - 0.5, top + (y + 0.5) * (bottom - top) / size - 0.5


def decode_with_geometry(path: str | BinaryIO, channels: int, size: int, trim: bool = False,
                         max_pixels: int | None = None, resize: str = "squash",
                         crop: float = 1.0) -> tuple[np.ndarray, Geometry]:
    """decode_image, and the Geometry that maps the input's pixels back to the picture's (imgcls explain)."""
    img = open_picture(path, draft=("L" if channels == 1 else "RGB", size), max_pixels=max_pixels)
    if not isinstance(path, str):
        path.seek(0)
    with Image.open(picture_file(path)) as header:  # the full size: a JPEG may have been drafted to a smaller scale
        width, height = header.size
        if header.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that swap the sides
            width, height = height, width
    array, box = _to_array(img, path, channels, size, trim, resize, crop)
    # A JPEG drafted to a smaller scale: its region is in the drafted picture's pixels.
    sx, sy = width / img.width, height / img.height
    left, top, right, bottom = box or (0, 0, img.width, img.height)
    return array, Geometry(width, height, (left * sx, top * sy, right * sx, bottom * sy))


PAD_GREY = 114  # the letterbox's fill (Ultralytics' value)


def _square(img: Image.Image, size: int, resize: str,
            crop: float = 1.0) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The picture as a size x size square, and the region of the picture that became the square
    (left, top, right, bottom in its pixels; outside the picture for pad). squash stretches the whole
    picture; crop scales the short side to `size` / `crop` and keeps the centre size x size
    (torchvision's and timm's eval presets); pad scales the long side to `size` and fills the rest with
    grey (a letterbox)."""
    w, h = img.size
    if resize == "squash":
        return img.resize((size, size), Image.Resampling.BILINEAR), (0.0, 0.0, float(w), float(h))
    scale = (round(size / crop) if resize == "crop" else size) / (min(w, h) if resize == "crop" else max(w, h))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2  # negative for pad: the picture sits inside the square
    if resize == "crop":
        square = scaled.crop((left, top, left + size, top + size))
    else:
        square = Image.new(img.mode, (size, size), (PAD_GREY,) * len(img.getbands()) if img.mode != "L" else PAD_GREY)
        square.paste(scaled, (-left, -top))
    sx, sy = w / nw, h / nh
    return square, (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def _to_array(img: Image.Image, path, channels: int, size: int | None, trim: bool, resize: str = "squash",
              crop: float = 1.0) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """(C, size, size) uint8 and the region of `img` it shows (None: all of it, unresized)."""
    if resize not in RESIZES:
        raise ValueError(f"resize={resize!r}; expected one of {RESIZES}")
    try:
        img = _convert(img, channels)
        box = border_box(img) if trim else None
        if box is not None:
            img = img.crop(box)
        offset = box[:2] if box is not None else (0, 0)
        region = (offset[0], offset[1], offset[0] + img.width, offset[1] + img.height) if box is not None else None
        if size is not None and img.size != (size, size):
            img, (left, top, right, bottom) = _square(img, size, resize, crop)
            region = (offset[0] + left, offset[1] + top, offset[0] + right, offset[1] + bottom)
        array = np.asarray(img, dtype=np.uint8)
    except Exception as error:  # an odd mode Pillow cannot convert: a reason, not a crash
        raise DecodeError(_reason(error, path)) from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array.transpose(2, 0, 1).copy(), region  # contiguous and writable (Pillow's buffer is read-only)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def probe_pictures(paths: list[str], count: int = 32) -> tuple[int, int]:
    """(channels, side) of a typical picture among `paths`, from the headers of `count` evenly spaced
    ones: 1 channel when all of them are greyscale, else 3; side = the median longer side."""
    step = max(1, len(paths) // count)
    grey, sides = True, []
    for path in paths[::step][:count]:
        try:
            with Image.open(picture_file(path)) as img:  # reads the header only
                grey &= img.mode in GREY_MODES
                sides.append(max(img.size))
        except Exception:  # a broken picture says nothing here; decoding reports it
            continue
    return (1 if grey and sides else 3), (int(np.median(sides)) if sides else 32)


# -- many pictures at once (no torch: the onnx backend's predict decodes through these too) --

log = logging.getLogger(__name__)


def decode_chunks(paths: list[str], channels: int, size: int, desc: str = "decoding", workers: int | None = None,
                  trim: bool = False, processes: int | None = None, resize: str = "squash",
                  crop: float = 1.0) -> Iterator[tuple[int, np.ndarray, list]]:
    """(start, uint8 array, reasons) per chunk of `paths`, in order: the pictures decoded in parallel,
    threads for a few pictures, forked processes for many (Pillow holds the GIL for most of a small
    picture's decode: 60,000 28x28 PNGs took 12.4 s in three threads and 2.8 s in two processes,
    `python bench/speed.py decode`). A reason is None where the picture decoded, else why it did not."""
    from tqdm.auto import tqdm

    if processes is None:
        processes = (os.cpu_count() or 1) if len(paths) >= PROCESS_MIN and _can_fork() else 1
    # Each task carries its own slice of paths: pickling the whole list per task would dominate.
    # Chunks of at most ~16 MB: a chunk is decoded, pickled and unpickled whole, so 256 pictures at 448 px
    # (154 MB, three copies in flight per worker) would take more memory than the decoded set is allowed.
    chunk = max(4, min(CHUNK, 2**24 // (channels * size * size)))
    chunks = [(start, paths[start:start + chunk]) for start in range(0, len(paths), chunk)]
    job = partial(_decode_chunk, channels, size, trim, resize, crop)
    workers = processes if processes > 1 else workers or min(8, (os.cpu_count() or 1) + 1)
    # Forked workers die with this process (even by SIGKILL) and hold none of its cache locks: see
    # data/locking.py.
    pool = (ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                                initializer=_start_worker, initargs=(os.getpid(),)) if processes > 1
            else ThreadPoolExecutor(workers))
    # At most two chunks per worker in flight: pool.map would submit every chunk at once, and decoded
    # chunks waiting for a slower consumer (the cache's writer) would pile up to the whole set in memory.
    todo = iter(chunks)
    try:
        with tqdm(total=len(paths), desc=desc, unit="img", mininterval=2.0, disable=None, leave=False) as bar:
            pending = deque((c, pool.submit(job, c)) for c in islice(todo, 2 * workers))
            while pending:
                stopping.check()  # a stop Python swallowed (in a callback) is acted on here
                chunk_paths, future = pending.popleft()
                try:
                    start, array, reasons = future.result()
                except BrokenProcessPool:  # a worker was killed (the OOM killer, a user): go on without them
                    log.warning("a decode worker died (killed, or out of memory?); decoding the rest in this process")
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = ThreadPoolExecutor(min(8, (os.cpu_count() or 1) + 1))
                    pending = deque((c, pool.submit(job, c)) for c in [chunk_paths, *(c for c, _ in pending)])
                    continue
                following = next(todo, None)
                if following is not None:
                    pending.append((following, pool.submit(job, following)))
                yield start, array, reasons
                bar.update(len(reasons))
    finally:  # on an interruption too: the queued chunks are dropped, the running ones finish
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(parent: int) -> None:
    from .locking import worker_dies_with_parent

    worker_dies_with_parent(parent)
    # Ctrl-C reaches the whole process group: the parent stops the pool; a worker's traceback would be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def decode_all(paths: list[str], channels: int, size: int, desc: str = "decoding",
               workers: int | None = None, trim: bool = False, processes: int | None = None,
               resize: str = "squash", crop: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Decode every picture into memory (decode_chunks). Returns the stacked array of the pictures that
    decoded, the indices into `paths` that did, and {path, reason} for each that did not: a broken
    picture is skipped and reported, never fatal."""
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: list[dict[str, str]] = []
    for start, array, reasons in decode_chunks(paths, channels, size, desc, workers, trim, processes, resize, crop):
        out[start:start + len(reasons)] = array
        for i, reason in enumerate(reasons, start):
            if reason is None:
                ok[i] = True
            else:
                skipped.append({"path": paths[i], "reason": reason})
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    index = np.flatnonzero(ok)
    return out[index] if len(index) < len(paths) else out, index, skipped


PROCESS_MIN = 4096  # pictures from which forked processes pay for their start
CHUNK = 256


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _decode_chunk(channels: int, size: int, trim: bool, resize: str, crop: float,
                  chunk: tuple[int, list[str]]) -> tuple[int, np.ndarray, list[str | None]]:
    start, paths = chunk
    array = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    reasons: list[str | None] = []
    for j, path in enumerate(paths):
        try:
            array[j] = decode_image(path, channels, size, trim, resize=resize, crop=crop)
            reasons.append(None)
        except DecodeError as error:
            reasons.append(str(error))
    return start, array, reasons


def inference_batch_size(channels: int, size: int) -> int:
    """Pictures per forward pass without gradients: about 4M input values, 8 to 256. On the CPU, larger
    batches of large pictures run slower (EfficientNet-Lite0 at 224 px: 38 pictures/s at 16-32,
    30 at 64, 19 at 256), as their activations no longer fit in cache."""
    return max(8, min(256, 2**22 // (channels * size * size)))
