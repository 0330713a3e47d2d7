"""Samples → tensors: every picture is decoded and resized once per run into one uint8 array, and
batches are cut from it, normalised on the fly on the target device (like tf.data's cache())."""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch

from .decode import DecodeError, decode_image
from .sources import Samples

log = logging.getLogger(__name__)


@dataclass
class DecodedImages:
    """Pictures that decoded, as one (N, C, H, W) uint8 tensor, with their labels and paths."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> "DecodedImages":
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return DecodedImages(self.images[index], self.labels[index], [self.paths[i] for i in indices])


def decode_all(paths: list[str], channels: int, size: int, desc: str = "decoding",
               workers: int | None = None, trim: bool = False,
               processes: int | None = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Decode every picture in parallel: threads for a few pictures, forked processes for many (Pillow
    holds the GIL for most of a small picture's decode: 60,000 28x28 PNGs took 25.4 s in three threads
    and 7.9 s in two processes, bench/RESULTS.md).

    Returns the stacked array of the pictures that decoded, the indices into `paths` that did, and
    {path, reason} for each that did not: a broken picture is skipped and reported, never fatal.
    """
    from tqdm.auto import tqdm

    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: list[dict[str, str]] = []
    if processes is None:
        processes = (os.cpu_count() or 1) if len(paths) >= PROCESS_MIN and _can_fork() else 1
    # Each task carries its own slice of paths: pickling the whole list per task would dominate.
    chunks = [(start, paths[start:start + CHUNK]) for start in range(0, len(paths), CHUNK)]
    job = partial(_decode_chunk, channels, size, trim)
    pool = (ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) if processes > 1
            else ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) + 1)))
    with pool, tqdm(total=len(paths), desc=desc, unit="img", mininterval=2.0, disable=None, leave=False) as bar:
        for start, array, reasons in pool.map(job, chunks):
            out[start:start + len(reasons)] = array
            for i, reason in enumerate(reasons, start):
                if reason is None:
                    ok[i] = True
                else:
                    skipped.append({"path": paths[i], "reason": reason})
            bar.update(len(reasons))
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


# Decoded arrays of this process, so that tuning trials and audit folds decode each picture once.
_MEMO: dict[tuple, tuple[np.ndarray, np.ndarray, list[dict[str, str]]]] = {}
_MEMO_ENTRIES = 4


def decode_samples(samples: Samples, channels: int, size: int, desc: str = "decoding",
                   trim: bool = False) -> tuple[DecodedImages, list[dict[str, str]]]:
    key = (tuple(samples.paths), channels, size, trim)
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_ENTRIES:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = decode_all(samples.paths, channels, size, desc, trim=trim)
    array, index, skipped = _MEMO[key]
    decoded = DecodedImages(torch.from_numpy(array), torch.from_numpy(samples.labels[index]),
                            [samples.paths[i] for i in index])
    return decoded, skipped


def inference_batch_size(channels: int, size: int) -> int:
    """Pictures per forward pass without gradients: about 4M input values, 8 to 256. On the CPU, larger
    batches of large pictures run slower (EfficientNet-Lite0 at 224 px: 38 pictures/s at 16-32,
    30 at 64, 19 at 256), as their activations no longer fit in cache."""
    return max(8, min(256, 2**22 // (channels * size * size)))


class BatchOrder:
    """The index tensors of one epoch's batches: a seeded shuffle (or in order), the last batch dropped
    only when it is a tiny remainder that would make BatchNorm statistics noisy."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, device: torch.device,
                 generator: torch.Generator | None = None, drop_last: bool = False, ranks: int = 1):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.device, self.generator = device, generator
        # Split over `ranks` processes, a remainder under 2 per rank would leave a rank one picture or none
        # (BatchNorm cannot train on that; an empty slice gave a NaN loss).
        tiny = max(2, batch_size // 8, 2 * ranks if ranks > 1 else 0)
        self.drop_last = drop_last and n % batch_size < tiny and n > batch_size

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = (torch.randperm(self.n, generator=self.generator).to(self.device) if self.shuffle
                 else torch.arange(self.n, device=self.device))
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


class BatchLoader:
    """Batches of normalised float tensors cut from a DecodedImages, shuffled by a seeded generator.

    The uint8 cache stays on `device`, so a GPU run moves each picture to the GPU once, not per epoch.
    """

    def __init__(self, data: DecodedImages, batch_size: int, mean: list[float], std: list[float], *,
                 shuffle: bool, device: torch.device, generator: torch.Generator | None = None,
                 drop_last: bool = False, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 shard: tuple[int, int] = (0, 1), channels_last: bool = False):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.order = BatchOrder(len(data), batch_size, shuffle=shuffle, device=device, generator=generator,
                                drop_last=drop_last, ranks=shard[1])
        self.augment = augment  # uint8 batch → uint8 batch, before normalisation
        # (rank, world): every rank walks the same shuffled global batches and keeps its slice of each,
        # so N processes with batch B train like one process with batch B.
        self.rank, self.world = shard
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.order)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def __iter__(self):
        for idx in self.order:
            idx = idx[self.rank::self.world]
            images = self.images[idx]
            if self.augment is not None:
                images = self.augment(images)
            yield self.normalise(images), self.labels[idx]
