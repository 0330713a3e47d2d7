"""An airbench-style network for small pictures (Keller Jordan's airbench, the CIFAR-10 speed record):
groups of conv → max-pool → BatchNorm → activation (→ conv-BN-activation), then a global max pool.

Pooling right after the first conv of each group runs the rest of the group at a quarter of the
pixels, which is what makes it cheap. The default widths suit a 2-core CPU (about 21 MFLOPs per
28x28 grey picture); `widths=64,256,256 stem=24 act=gelu` is airbench94's shape for a GPU.
"""
from __future__ import annotations

import torch.nn as nn

from .base import Classifier
from .registry import register

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _conv_bn_act(cin: int, cout: int, act: type[nn.Module]) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), act()]


def _group(cin: int, cout: int, second_conv: bool, act: type[nn.Module]) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(cout), act()]
    if second_conv:
        layers += _conv_bn_act(cout, cout, act)
    return nn.Sequential(*layers)


def _ints(value, name: str) -> list[int]:
    """A model argument given as 32,64,128 (CLI, YAML) or a list."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        numbers = [int(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be integers such as 32,64,128") from None
    if not numbers or min(numbers) < 0:
        raise ValueError(f"{name} must be non-negative integers such as 32,64,128")
    return numbers


class AirNet(Classifier):
    def __init__(self, num_classes: int, in_chans: int = 3, widths=(32, 64, 128), second_conv=(0, 1, 1),
                 stem: int = 0, act: str = "relu"):
        super().__init__()
        widths, second_conv = _ints(widths, "widths"), _ints(second_conv, "second_conv")
        if len(second_conv) != len(widths):
            raise ValueError(f"second_conv needs one 0/1 per group ({len(widths)}), got {second_conv}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
        activation = ACTIVATIONS[act]
        blocks: dict[str, nn.Module] = {}
        previous = in_chans
        if stem:
            blocks["stem"] = nn.Sequential(*_conv_bn_act(in_chans, stem, activation))
            previous = stem
        for i, (width, second) in enumerate(zip(widths, second_conv)):
            blocks[f"group{i + 1}"] = _group(previous, width, bool(second), activation)
            previous = width
        blocks["pool"] = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.features = nn.Sequential()
        for name, block in blocks.items():
            self.features.add_module(name, block)
        self.num_features = previous
        self.head = nn.Linear(previous, num_classes)


@register("airnet", input_size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), fits_pictures=True)
def airnet(num_classes: int, in_chans: int, img_size: int, widths=(32, 64, 128), second_conv=(0, 1, 1),
           stem: int = 0, act: str = "relu") -> AirNet:
    return AirNet(num_classes, in_chans, widths, second_conv, stem, act)
