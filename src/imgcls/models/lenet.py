"""LeNet-5 as published (LeCun et al. 1998): 5x5 convs 6/16/120, tanh, average pooling, 84-unit dense."""
from __future__ import annotations

import torch.nn as nn

from .base import Classifier
from .registry import register


class LeNet5(Classifier):
    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 32):
        super().__init__()
        if img_size < 32:
            raise ValueError(f"LeNet-5 needs img_size >= 32, got {img_size}")
        side = ((img_size - 4) // 2 - 4) // 2 - 4  # 32 px → 1x1 after the third conv
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(),
            nn.Linear(120 * side * side, 84), nn.Tanh(),
        )
        self.num_features = 84
        self.head = nn.Linear(84, num_classes)


@register("lenet5", input_size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
def lenet5(num_classes: int, in_chans: int, img_size: int) -> LeNet5:
    return LeNet5(num_classes, in_chans, img_size)
