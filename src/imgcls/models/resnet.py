"""ResNet-50 from bottleneck blocks [3, 4, 6, 3] (torchvision's implementation), trained from scratch."""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import resnet as tv_resnet

from .base import Classifier
from .registry import register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNet(Classifier):
    """Wraps torchvision's ResNet so it splits into features (global-pooled) and a linear head."""

    def __init__(self, body: tv_resnet.ResNet, num_classes: int, in_chans: int):
        super().__init__()
        if in_chans != 3:
            body.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.num_features = body.fc.in_features
        body.fc = nn.Identity()
        self.body = body
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register("resnet50", description="ResNet-50, bottleneck blocks [3,4,6,3], from scratch",
          input_size=224, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
def resnet50(num_classes: int, in_chans: int, img_size: int) -> ResNet:
    return ResNet(tv_resnet.ResNet(tv_resnet.Bottleneck, [3, 4, 6, 3]), num_classes, in_chans)
