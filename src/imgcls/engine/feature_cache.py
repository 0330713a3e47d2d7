"""Frozen-feature caching: the output of a model's frozen leading blocks, computed once per picture.

While those blocks are frozen and the pictures are not augmented, their output never changes, so
training only needs the rest of the model: head training on a CPU takes seconds instead of hours.
The cache is kept per process and per picture path, so audit folds and repeated runs of the same
frozen backbone compute each picture once.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from ..data.dataset import BatchLoader, BatchOrder, DecodedImages, inference_batch_size

log = logging.getLogger(__name__)

# key → {"index": path → row, "parts": list of (rows, ...) tensors}
_MEMO: dict[tuple, dict[str, Any]] = {}
_MEMO_ENTRIES = 2


class CachedTail(nn.Module):
    """The trainable rest of `model`, fed with cached prefix outputs; `model` stays registered so
    train()/eval() reach it (and its frozen blocks stay in eval mode)."""

    def __init__(self, model: nn.Module, rest: Callable[[Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self._rest = rest

    def forward(self, parts: Any) -> torch.Tensor:
        return self._rest(parts)


class FeatureLoader:
    """Batches of cached prefix outputs (one tensor, or a tuple for a fusion model) with their labels."""

    def __init__(self, parts: tuple[torch.Tensor, ...], labels: torch.Tensor, batch_size: int, *, shuffle: bool,
                 generator: torch.Generator | None = None, drop_last: bool = False):
        self.parts, self.labels = parts, labels
        self.order = BatchOrder(len(labels), batch_size, shuffle=shuffle, device=labels.device,
                                generator=generator, drop_last=drop_last)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for idx in self.order:
            parts = tuple(p[idx] for p in self.parts)
            yield (parts[0] if len(parts) == 1 else parts), self.labels[idx]


def weights_digest(modules: list[nn.Module]) -> str:
    """A digest of the modules' parameters and buffers: equal digests compute equal features."""
    digest = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def _compute(model: nn.Module, prefix: Callable, loader: BatchLoader) -> list[torch.Tensor]:
    model.eval()
    # channels_last runs convolutions 1.5-1.8x faster on CPU here (EfficientNet-Lite0 at 224 px:
    # 8.6 → 15.7 pictures/s); the model keeps it for training too.
    model.to(memory_format=torch.channels_last)
    chunks: list[tuple[torch.Tensor, ...]] = []
    for images, _ in loader:
        out = prefix(images.contiguous(memory_format=torch.channels_last))
        chunks.append(out if isinstance(out, tuple) else (out,))
    return [torch.cat(column) for column in zip(*chunks)]


def frozen_features(key: tuple, model: nn.Module, prefix: Callable, data: DecodedImages, *, mean: list[float],
                    std: list[float], device: torch.device) -> tuple[torch.Tensor, ...]:
    """prefix(picture) for every picture of `data`, computing only those not cached under `key` yet."""
    store = _MEMO.get(key)
    if store is None:
        if len(_MEMO) >= _MEMO_ENTRIES:
            _MEMO.pop(next(iter(_MEMO)))
        store = _MEMO[key] = {"index": {}, "parts": None}
    missing = [i for i, p in enumerate(data.paths) if p not in store["index"]]
    if missing:
        start = time.perf_counter()
        channels, height, width = data.picture_shape
        loader = BatchLoader(data.subset(missing), inference_batch_size(channels, max(height, width)), mean, std,
                             shuffle=False, device=device)
        new = _compute(model, prefix, loader)
        offset = 0 if store["parts"] is None else len(store["parts"][0])
        store["parts"] = new if store["parts"] is None else [torch.cat([a, b]) for a, b in zip(store["parts"], new)]
        for row, i in enumerate(missing):
            store["index"][data.paths[i]] = offset + row
        megabytes = sum(p[:1].numel() * p.element_size() for p in new) * len(missing) / 2**20
        log.info("frozen-feature cache: computed the frozen blocks' output for %d pictures in %.1f s "
                 "(%.0f MB); reused every epoch", len(missing), time.perf_counter() - start, megabytes)
    else:
        log.info("frozen-feature cache: all %d pictures already cached in this process", len(data))
    rows = torch.as_tensor([store["index"][p] for p in data.paths], device=store["parts"][0].device)
    return tuple(part[rows] for part in store["parts"])
