"""Decoded rows → batches: a seeded order (uniform, or quasi-random for a cache file larger than
memory), gathered by a background thread ahead of use and normalised on the fly on the target device
(tf.data's cache() + prefetch(), FFCV's quasi-random order)."""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Iterator

import numpy as np
import torch

from ..choices import ORDERS
from .dataset import DecodedImages
from .store import available_memory

log = logging.getLogger(__name__)

def quasi_random(file_rows: np.ndarray, block_rows: int, window_blocks: int, generator: torch.Generator) -> torch.Tensor:
    """A shuffle that keeps reads local (FFCV's QUASI_RANDOM): positions sorted by their place in the
    file, cut into blocks of `block_rows`, the blocks shuffled, then positions shuffled within windows
    of `window_blocks` consecutive blocks. An epoch then reads one window's pages at a time."""
    by_place = torch.from_numpy(np.argsort(file_rows, kind="stable"))
    blocks = list(torch.split(by_place, block_rows))
    shuffled = [blocks[int(b)] for b in torch.randperm(len(blocks), generator=generator)]
    order = []
    for start in range(0, len(shuffled), window_blocks):
        window = torch.cat(shuffled[start:start + window_blocks])
        order.append(window[torch.randperm(len(window), generator=generator)])
    return torch.cat(order) if order else by_place


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Sampling weight 1 / (pictures of its class) per picture: every class drawn equally often. For several
    labels per picture (a multi-hot matrix), 1 / (pictures of its rarest label), as LVIS's repeat-factor
    sampling ranks pictures by their rarest category; a picture with no label counts as the class "none"."""
    labels = labels.cpu()
    if labels.ndim == 1:
        return 1.0 / torch.bincount(labels)[labels].double()
    hot = labels > 0
    counts = hot.sum(0).double()
    rarest = torch.where(hot, counts, torch.inf).amin(1)
    return 1.0 / torch.where(hot.any(1), rarest, (~hot.any(1)).sum().double())


class BatchOrder:
    """The index tensors of one epoch's batches: a seeded shuffle (or in order), the last batch dropped
    only when it is a tiny remainder that would make BatchNorm statistics noisy. With `file_rows`
    (each position's row in a file larger than memory) the shuffle is quasi-random: local reads."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, device: torch.device,
                 generator: torch.Generator | None = None, drop_last: bool = False, ranks: int = 1,
                 file_rows: np.ndarray | None = None, row_bytes: int = 0, memory: int = 0,
                 weights: torch.Tensor | None = None):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.weights = weights  # per-position sampling weights: an epoch of n draws with replacement
        self.device, self.generator = device, generator
        # Split over `ranks` processes, a remainder under 2 per rank would leave a rank one picture or none
        # (BatchNorm cannot train on that; an empty slice gave a NaN loss).
        tiny = max(2, batch_size // 8, 2 * ranks if ranks > 1 else 0)
        self.drop_last = drop_last and n % batch_size < tiny and n > batch_size
        self.file_rows = file_rows
        # Blocks of ~8 MB (FFCV's page size); a window of a quarter of the memory there is, so that a
        # window's pages stay cached while its batches are read.
        self.block_rows = max(1, 2**23 // max(row_bytes, 1))
        self.window_blocks = max(2, memory // 4 // max(self.block_rows * row_bytes, 1))

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def permutation(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=self.generator)
        if self.file_rows is not None:
            return quasi_random(self.file_rows, self.block_rows, self.window_blocks, self.generator)
        return torch.randperm(self.n, generator=self.generator)

    def __iter__(self):
        order = self.permutation().to(self.device)
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


def prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """The items of `items`, produced by a background thread up to `depth` ahead: the next batches are
    gathered from the memory map (a page fault waits on the disk) and copied to the GPU while the
    current one trains. Torch releases the GIL inside its kernels, so the two overlap."""
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as error:  # handed to the consumer, raised there with its traceback
            put(("error", error))

    worker = threading.Thread(target=produce, name="imgcls-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join(timeout=10)


class RowLoader:
    """Batches of a DecodedImages' rows with their labels, in a seeded order, gathered ahead of use by a
    background thread (prefetch). Subclasses turn a batch of rows into the model's input (`prepare`).

    order="auto" shuffles quasi-randomly when the set's cache file is larger than half the memory
    there is (its pages cannot all stay cached), else uniformly; "random" and "quasi" force one.
    """

    def __init__(self, data: DecodedImages, batch_size: int, *, shuffle: bool, device: torch.device,
                 generator: torch.Generator | None = None, drop_last: bool = False,
                 shard: tuple[int, int] = (0, 1), order: str = "auto", balanced: bool = False):
        if order not in ORDERS:
            raise ValueError(f"order={order!r}; expected one of {ORDERS}")
        self.data = data.to(device)
        self.device = device
        # Streamed: the rows stay in host memory (a GPU they do not fit on) and each batch is copied.
        self.streamed = self.data.images.device.type != device.type
        self.labels = self.data.labels.to(device)
        file_bytes = len(data.images) * data.row_bytes
        # (memory is read from /proc only where it decides something: a shuffled, mapped set)
        memory = available_memory() if shuffle and (order == "quasi" or data.mapped) else 0
        local = shuffle and (order == "quasi" or order == "auto" and data.mapped and file_bytes > memory // 2)
        self.order = BatchOrder(len(data), batch_size, shuffle=shuffle,
                                device=torch.device("cpu") if self.streamed else device, generator=generator,
                                drop_last=drop_last, ranks=shard[1], file_rows=data.file_rows() if local else None,
                                row_bytes=data.row_bytes, memory=memory,
                                weights=balanced_weights(data.labels) if balanced and shuffle else None)
        # (rank, world): every rank walks the same shuffled global batches and keeps its slice of each,
        # so N processes with batch B train like one process with batch B.
        self.rank, self.world = shard

    def __len__(self) -> int:
        return len(self.order)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.streamed:
            return self.data.pictures(idx)
        # Pinned, then an asynchronous copy: the next batch crosses the bus while this one trains.
        return self.data.pictures(idx).pin_memory().to(self.device, non_blocking=True)

    def prepare(self, rows: torch.Tensor):
        return rows

    def __iter__(self):
        # The order is drawn here, in the caller's thread, so the seeded generator's use does not change.
        batches = [idx[self.rank::self.world] for idx in self.order]
        for idx, rows in prefetch((idx, self._gather(idx)) for idx in batches):
            yield self.prepare(rows), self.labels[idx]


class BatchLoader(RowLoader):
    """Batches of normalised float pictures cut from a DecodedImages, augmented on uint8 batches first."""

    def __init__(self, data: DecodedImages, batch_size: int, mean: list[float], std: list[float], *,
                 shuffle: bool, device: torch.device, generator: torch.Generator | None = None,
                 drop_last: bool = False, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 shard: tuple[int, int] = (0, 1), channels_last: bool = False, order: str = "auto",
                 balanced: bool = False):
        super().__init__(data, batch_size, shuffle=shuffle, device=device, generator=generator,
                         drop_last=drop_last, shard=shard, order=order, balanced=balanced)
        self.augment = augment  # uint8 batch → uint8 batch, before normalisation
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            images = self.augment(images)
        return self.normalise(images)
