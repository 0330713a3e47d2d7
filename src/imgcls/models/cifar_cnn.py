"""The classic Keras CIFAR-10 example: conv32-conv32-pool-dropout, conv64-conv64-pool-dropout, dense 512."""
from __future__ import annotations

import torch.nn as nn

from .base import Classifier
from .registry import register


class CifarCNN(Classifier):
    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 32, dropout: float = 0.25):
        super().__init__()
        side = ((img_size - 2) // 2 - 2) // 2  # 'same' then 'valid' convs, as in the Keras example
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Dropout(dropout),
            nn.Flatten(), nn.Linear(64 * side * side, 512), nn.ReLU(inplace=True),
        )
        self.num_features = 512
        self.head = nn.Sequential(nn.Dropout(2 * dropout), nn.Linear(512, num_classes))


@register("cifar-cnn", input_size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
def cifar_cnn(num_classes: int, in_chans: int, img_size: int, dropout: float = 0.25) -> CifarCNN:
    return CifarCNN(num_classes, in_chans, img_size, dropout)
