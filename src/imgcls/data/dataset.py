"""Samples → decoded pictures: every picture is decoded and resized once, into the persistent cache
(data/store.py) or one in-memory uint8 array; data/loader.py cuts batches from it."""
from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import numpy as np
import torch

from .decode import DecodeError, decode_image
from .sources import Samples
from .store import CacheSettings, DecodedStore

log = logging.getLogger(__name__)


@dataclass
class DecodedImages:
    """Pictures that decoded, with their labels and paths. `images` holds uint8 (C, H, W) rows: the
    persistent cache's memory map (data/store.py) or an in-memory array; `rows` says which row is each
    picture (None: row i is picture i). Subsets share `images`, so splitting a set copies no pixels."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    rows: torch.Tensor | None = None
    mapped: bool = False  # `images` is a memory map of a cache file (pages come from disk on demand)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def picture_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def pictures(self, positions) -> torch.Tensor:
        """The uint8 pictures at these positions (reads only their rows from a memory map)."""
        positions = torch.as_tensor(positions, dtype=torch.long)
        return self.images[positions if self.rows is None else self.rows[positions]]

    def subset(self, indices: np.ndarray) -> "DecodedImages":
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        rows = index if self.rows is None else self.rows[index]
        return DecodedImages(self.images, self.labels[index], [self.paths[i] for i in indices], rows, self.mapped)

    @property
    def nbytes(self) -> int:
        """Bytes of this set's rows."""
        return len(self) * self.images[:1].numel() * self.images.element_size()

    def file_rows(self) -> np.ndarray:
        """Each picture's row in `images` (its place in the cache file)."""
        return np.arange(len(self)) if self.rows is None else self.rows.numpy()

    def to(self, device: torch.device) -> "DecodedImages":
        """On the CPU, itself (batches are read from the rows as needed). On a GPU, this set's rows copied
        to the device once when they fit in half of its free memory, so an epoch moves no pixels; else
        itself, and the loaders copy each batch from pinned memory ahead of use."""
        if device.type == "cpu" or self.images.device.type == device.type:
            return self
        if device.type == "cuda" and self.nbytes > torch.cuda.mem_get_info(device)[0] // 2:
            log.info("%.0f MB of cached rows exceed half the GPU's free memory: batches are copied as used",
                     self.nbytes / 2**20)
            return self
        return DecodedImages(self.pictures(torch.arange(len(self))).to(device), self.labels.to(device), self.paths)


def decode_chunks(paths: list[str], channels: int, size: int, desc: str = "decoding", workers: int | None = None,
                  trim: bool = False, processes: int | None = None) -> Iterator[tuple[int, np.ndarray, list]]:
    """(start, uint8 array, reasons) per chunk of `paths`, in order: the pictures decoded in parallel,
    threads for a few pictures, forked processes for many (Pillow holds the GIL for most of a small
    picture's decode: 60,000 28x28 PNGs took 25.4 s in three threads and 7.9 s in two processes,
    bench/RESULTS.md). A reason is None where the picture decoded, else why it did not."""
    from tqdm.auto import tqdm

    if processes is None:
        processes = (os.cpu_count() or 1) if len(paths) >= PROCESS_MIN and _can_fork() else 1
    # Each task carries its own slice of paths: pickling the whole list per task would dominate.
    # Chunks of at most ~16 MB: a chunk is decoded, pickled and unpickled whole, so 256 pictures at 448 px
    # (154 MB, three copies in flight per worker) would take more memory than the decoded set is allowed.
    chunk = max(4, min(CHUNK, 2**24 // (channels * size * size)))
    chunks = [(start, paths[start:start + chunk]) for start in range(0, len(paths), chunk)]
    job = partial(_decode_chunk, channels, size, trim)
    workers = processes if processes > 1 else workers or min(8, (os.cpu_count() or 1) + 1)
    pool = (ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) if processes > 1
            else ThreadPoolExecutor(workers))
    # At most two chunks per worker in flight: pool.map would submit every chunk at once, and decoded
    # chunks waiting for a slower consumer (the cache's writer) would pile up to the whole set in memory.
    todo = iter(chunks)
    with pool, tqdm(total=len(paths), desc=desc, unit="img", mininterval=2.0, disable=None, leave=False) as bar:
        pending = deque(pool.submit(job, c) for c in itertools.islice(todo, 2 * workers))
        while pending:
            start, array, reasons = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(job, following))
            yield start, array, reasons
            bar.update(len(reasons))


def decode_all(paths: list[str], channels: int, size: int, desc: str = "decoding",
               workers: int | None = None, trim: bool = False,
               processes: int | None = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Decode every picture into memory (decode_chunks). Returns the stacked array of the pictures that
    decoded, the indices into `paths` that did, and {path, reason} for each that did not: a broken
    picture is skipped and reported, never fatal."""
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: list[dict[str, str]] = []
    for start, array, reasons in decode_chunks(paths, channels, size, desc, workers, trim, processes):
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


def _decode_chunk(channels: int, size: int, trim: bool,
                  chunk: tuple[int, list[str]]) -> tuple[int, np.ndarray, list[str | None]]:
    start, paths = chunk
    array = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    reasons: list[str | None] = []
    for j, path in enumerate(paths):
        try:
            array[j] = decode_image(path, channels, size, trim)
            reasons.append(None)
        except DecodeError as error:
            reasons.append(str(error))
    return start, array, reasons


def decode_paths(paths: list[str], labels: np.ndarray, channels: int, size: int, desc: str = "decoding",
                 trim: bool = False, cache: CacheSettings | None = None) -> tuple[DecodedImages, list[dict[str, str]]]:
    """Decode `paths` at (channels, size): through the persistent decoded cache (only new or changed
    pictures are decoded; every process and rank maps the same file), or with cache.enabled=False in
    this process's memory. Returns the pictures that decoded and the skipped ones with their reasons."""
    cache = cache or CacheSettings()
    labels = np.asarray(labels)
    if cache.enabled:
        store = DecodedStore(cache.root, channels, size, trim, max_gb=cache.max_gb)
        rows, skipped = store.lookup(paths, desc)
        ok = np.flatnonzero(rows >= 0)
        return DecodedImages(torch.from_numpy(store.array()), torch.from_numpy(labels[ok]),
                             [paths[i] for i in ok], torch.from_numpy(rows[ok]), mapped=True), skipped
    start = time.perf_counter()
    array, index, skipped = decode_all(paths, channels, size, desc, trim=trim)
    log.info("decoded %d pictures in %.1f s into this process's memory (--no-cache)", len(paths),
             time.perf_counter() - start)
    return DecodedImages(torch.from_numpy(array), torch.from_numpy(labels[index]),
                         [paths[i] for i in index]), skipped


def decode_samples(samples: Samples, channels: int, size: int, desc: str = "decoding", trim: bool = False,
                   cache: CacheSettings | None = None) -> tuple[DecodedImages, list[dict[str, str]]]:
    return decode_paths(samples.paths, samples.labels, channels, size, desc, trim, cache)


def inference_batch_size(channels: int, size: int) -> int:
    """Pictures per forward pass without gradients: about 4M input values, 8 to 256. On the CPU, larger
    batches of large pictures run slower (EfficientNet-Lite0 at 224 px: 38 pictures/s at 16-32,
    30 at 64, 19 at 256), as their activations no longer fit in cache."""
    return max(8, min(256, 2**22 // (channels * size * size)))
