"""Samples → decoded pictures: every picture is decoded and resized once, into the persistent cache
(data/store.py) or one in-memory uint8 array; data/loader.py cuts batches from it."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .sources import Samples
from .store import CacheSettings, decode_rows

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
    def row_bytes(self) -> int:
        """Bytes of one picture's row."""
        return self.images[:1].numel() * self.images.element_size()

    @property
    def nbytes(self) -> int:
        """Bytes of this set's rows."""
        return len(self) * self.row_bytes

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


def decode_paths(paths: list[str], labels: np.ndarray, channels: int, size: int, desc: str = "decoding",
                 trim: bool = False, cache: CacheSettings | None = None,
                 resize: str = "squash", signatures: np.ndarray | None = None,
                 crop: float = 1.0) -> tuple[DecodedImages, list[dict[str, str]]]:
    """decode_rows (data/store.py) as a DecodedImages with the labels of the pictures that decoded."""
    decoded, ok, skipped = decode_rows(paths, channels, size, desc, trim, cache, resize, signatures, crop)
    mapped = cache is None or cache.enabled
    return DecodedImages(torch.from_numpy(decoded.array), torch.from_numpy(np.asarray(labels)[ok]),
                         [paths[i] for i in ok], torch.from_numpy(decoded.rows) if mapped else None, mapped), skipped


def decode_samples(samples: Samples, channels: int, size: int, desc: str = "decoding", trim: bool = False,
                   cache: CacheSettings | None = None, resize: str = "squash",
                   crop: float = 1.0) -> tuple[DecodedImages, list[dict[str, str]]]:
    return decode_paths(samples.paths, samples.labels, channels, size, desc, trim, cache, resize, samples.signatures,
                        crop)
