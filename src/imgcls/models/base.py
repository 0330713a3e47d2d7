"""The split every model follows: blocks → pooled features (forward_features) → logits (forward_head).

`blocks()` lists the trunk in execution order, so freezing ("the last N blocks") and frozen-feature
caching (compute the frozen leading blocks once) work for every model alike (timm's feature_info,
fastai's create_body).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn


# (prefix, rest, the modules prefix runs): what frozen-feature caching needs from a model.
FrozenSplit = tuple[Callable[[torch.Tensor], Any], Callable[[Any], torch.Tensor], list[nn.Module]]


def has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def is_frozen(module: nn.Module) -> bool:
    """No trainable parameter (a block without parameters, such as pooling, counts as frozen)."""
    return not any(p.requires_grad for p in module.parameters())


class Classifier(nn.Module):
    """Subclasses set `self.head` (a Linear or a Sequential ending in one), `num_features`, and either
    `self.features` (a Sequential whose children are the blocks) or their own `blocks()`."""

    num_features: int

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """(name, module) pairs whose composition in order is forward_features."""
        return [(str(name), module) for name, module in self.features.named_children()]

    def block_groups(self) -> list[list[tuple[str, nn.Module]]]:
        """Blocks per backbone: one group here, one per member in a fusion model."""
        return [self.blocks()]

    def forward_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for _, block in self.blocks()[start:stop]:
            x = block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_blocks(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def frozen_prefix(self, keep_last: int = 0) -> int:
        """How many leading blocks have no trainable parameter (their output can be computed once),
        stopping before the last `keep_last` blocks that have parameters."""
        blocks = self.blocks()
        with_params = [i for i, (_, b) in enumerate(blocks) if has_params(b)]
        limit = with_params[-keep_last] if 0 < keep_last <= len(with_params) else len(blocks)
        count = 0
        for _, block in blocks[:limit]:
            if not is_frozen(block):
                break
            count += 1
        return count

    def split_frozen(self, keep_last: int = 0) -> FrozenSplit | None:
        """(prefix, rest, prefix modules) with rest(prefix(x)) == self(x) and nothing trainable in
        prefix; None when the first block trains (nothing to cache). keep_last: see frozen_prefix."""
        k = self.frozen_prefix(keep_last)
        if k == 0:
            return None
        return ((lambda x: self.forward_blocks(x, 0, k)), (lambda z: self.forward_head(self.forward_blocks(z, k))),
                [block for _, block in self.blocks()[:k]])

    def train(self, mode: bool = True) -> "Classifier":
        # Frozen blocks stay in eval mode: their BatchNorm statistics and dropout must not change
        # while the head trains (Keras' trainable=False semantics).
        super().train(mode)
        if mode:
            for group in self.block_groups():
                for _, block in group:
                    if is_frozen(block):
                        block.eval()
        return self

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last linear layer with a fresh one for `num_classes` classes."""
        if isinstance(self.head, nn.Linear):
            self.head = nn.Linear(self.head.in_features, num_classes)
        else:
            last = self.head[-1]
            self.head[-1] = nn.Linear(last.in_features, num_classes)
