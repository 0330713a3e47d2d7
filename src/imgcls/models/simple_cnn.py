"""The apparel walkthrough's small CNN: two conv(3x3)-BatchNorm-ReLU-maxpool blocks and one linear layer."""
from __future__ import annotations

import torch.nn as nn

from .base import Classifier
from .registry import register


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class SimpleCNN(Classifier):
    def __init__(self, num_classes: int, in_chans: int = 1, img_size: int = 28, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(_block(in_chans, width), _block(width, width), nn.Flatten())
        self.num_features = width * (img_size // 4) ** 2
        self.head = nn.Linear(self.num_features, num_classes)


@register("simple-cnn", input_size=28, channels=1, mean=(0.5,), std=(0.5,))
def simple_cnn(num_classes: int, in_chans: int, img_size: int, width: int = 32) -> SimpleCNN:
    return SimpleCNN(num_classes, in_chans, img_size, width)
