"""The split every model follows: forward_features → pooled features, forward_head → logits."""
from __future__ import annotations

import torch
import torch.nn as nn


class Classifier(nn.Module):
    """Subclasses set `self.features`, `self.head` (a Linear or a Sequential ending in one) and `num_features`."""

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last linear layer with a fresh one for `num_classes` classes."""
        if isinstance(self.head, nn.Linear):
            self.head = nn.Linear(self.head.in_features, num_classes)
        else:
            last = self.head[-1]
            self.head[-1] = nn.Linear(last.in_features, num_classes)
