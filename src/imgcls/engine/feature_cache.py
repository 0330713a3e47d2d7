"""Frozen-feature caching: the output of a model's frozen leading blocks, computed once per picture.

While those blocks are frozen and the pictures are not augmented, their output never changes, so
training only needs the rest of the model: head training on a CPU takes seconds instead of hours.
The outputs live in the persistent cache beside the decoded pictures (data/store.py), keyed by what
the frozen blocks compute (architecture, their weights' digest, the decoding setting) and by each
picture's path, size and modification time: audit folds, finetune's stage 2 and every later run or
process with the same frozen blocks compute each picture once, and training reads batches from the
memory map. With the cache off (--no-cache) they are computed into this process's memory.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..data.dataset import DecodedImages
from ..data.decode import inference_batch_size
from ..data.loader import BatchLoader, RowLoader
from ..data.store import CacheSettings, RowStore

log = logging.getLogger(__name__)

FORMAT = "imgcls-features/1"


class CachedTail(nn.Module):
    """The trainable rest of `model`, fed with cached prefix outputs; `model` stays registered so
    train()/eval() reach it (and its frozen blocks stay in eval mode)."""

    def __init__(self, model: nn.Module, rest: Callable[[Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self._rest = rest

    def forward(self, parts: Any) -> torch.Tensor:
        return self._rest(parts)


class FrozenFeatures:
    """The cached prefix outputs of a set of pictures: flat float32 rows (a fusion model's several
    outputs side by side) and the shape of each output, so a batch of rows splits back into them."""

    def __init__(self, rows: DecodedImages, shapes: list[tuple[int, ...]]):
        self.rows, self.shapes = rows, shapes

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sizes = [math.prod(s) for s in self.shapes]
        return tuple(part.reshape(len(flat), *shape) for part, shape in zip(flat.split(sizes, 1), self.shapes))


class FeatureLoader(RowLoader):
    """Batches of cached prefix outputs (one tensor, or a tuple for a fusion model) with their labels."""

    def __init__(self, features: FrozenFeatures, batch_size: int, *, shuffle: bool, device: torch.device,
                 generator: torch.Generator | None = None, drop_last: bool = False, balanced: bool = False):
        super().__init__(features.rows, batch_size, shuffle=shuffle, device=device, generator=generator,
                         drop_last=drop_last, balanced=balanced)
        self.features = features

    def prepare(self, flat: torch.Tensor):
        parts = self.features.split(flat)
        return parts[0] if len(parts) == 1 else parts


def weights_digest(modules: list[nn.Module]) -> str:
    """A digest of the modules' parameters and buffers: equal digests compute equal features."""
    digest = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def _outputs(model: nn.Module, prefix: Callable, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    model.eval()
    # channels_last runs convolutions 1.5-1.8x faster on CPU here (EfficientNet-Lite0 at 224 px:
    # 8.6 → 15.7 pictures/s); the model keeps it for training too.
    model.to(memory_format=torch.channels_last)
    out = prefix(images.contiguous(memory_format=torch.channels_last))
    return out if isinstance(out, tuple) else (out,)


def _flat_batches(model: nn.Module, prefix: Callable, data: DecodedImages, mean: list[float], std: list[float],
                  device: torch.device):
    """(offset, float32 rows, reasons) per batch of `data`, the prefix's outputs flattened side by side."""
    channels, height, width = data.picture_shape
    loader = BatchLoader(data, inference_batch_size(channels, max(height, width)), mean, std, shuffle=False,
                         device=device)
    offset = 0
    for images, _ in loader:
        flat = torch.cat([o.float().flatten(1) for o in _outputs(model, prefix, images)], 1).cpu().numpy()
        yield offset, flat, [None] * len(flat)
        offset += len(flat)


def frozen_features(key: dict, model: nn.Module, prefix: Callable, data: DecodedImages, *, mean: list[float],
                    std: list[float], device: torch.device, cache: CacheSettings | None = None) -> FrozenFeatures:
    """prefix(picture) for every picture of `data`: from the persistent cache, computing only the
    pictures not cached under `key` yet (with the cache off, all of them, in memory)."""
    cache = cache or CacheSettings()
    # One picture through the prefix gives the outputs' shapes (a tenth of a second for ResNet-50).
    shapes = [tuple(o.shape[1:]) for o in _outputs(model, prefix, torch.zeros(1, *data.picture_shape, device=device))]
    width = sum(math.prod(s) for s in shapes)
    start = time.perf_counter()
    if not cache.enabled:
        flat = np.concatenate([rows for _, rows, _ in _flat_batches(model, prefix, data, mean, std, device)] or
                              [np.zeros((0, width), np.float32)])
        rows = DecodedImages(torch.from_numpy(flat), data.labels, data.paths)
        log.info("frozen-feature cache: computed the frozen blocks' output for %d pictures in %.1f s (%.0f MB, "
                 "in memory); reused every epoch", len(data), time.perf_counter() - start, flat.nbytes / 2**20)
        return FrozenFeatures(rows, shapes)
    settings = {"format": FORMAT, **key, "shapes": [list(s) for s in shapes]}
    name = "features-" + re.sub(r"[^A-Za-z0-9_.]+", "_", str(key.get("model", "model")))[:40]
    store = RowStore(cache.root, name, settings, (width,), np.float32, cache.max_gb)

    def compute(positions: list[int]):
        return _flat_batches(model, prefix, data.subset(positions), mean, std, device)

    index, _ = store.lookup_rows(data.paths, compute, "frozen features")
    rows = DecodedImages(torch.from_numpy(store.array()), data.labels, data.paths, torch.from_numpy(index),
                         mapped=True)
    log.info("frozen-feature cache: %d pictures' frozen-block outputs (%.0f MB) ready in %.1f s; reused every "
             "epoch", len(data), rows.nbytes / 2**20, time.perf_counter() - start)
    return FrozenFeatures(rows, shapes)
