"""An airbench-style network for small pictures (Keller Jordan's airbench, the CIFAR-10 speed record):
groups of conv → max-pool → BatchNorm → activation (→ conv-BN-activation), then a global max pool.

Pooling right after the first conv of each group runs the rest of the group at a quarter of the
pixels, which is what makes it cheap. The default widths suit a 2-core CPU (about 21 MFLOPs per
28x28 grey picture); `widths=64,256,256 whiten=1 act=gelu` is airbench94's shape for a GPU.

whiten=1 starts with airbench's frozen patch-whitening layer: a 2x2 convolution whose filters are the
eigenvectors of the training pictures' 2x2-patch covariance, scaled by 1/sqrt(eigenvalue) (and their
negatives), so its output has the identity covariance on those patches. It is computed once at the
start of a run (fit_whitening, called by build.py) and saved with the weights like any layer, so
predict, export and serve need nothing new.
"""
from __future__ import annotations

import torch
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


WHITEN_EPS = 5e-4  # airbench's: keeps the smallest eigenvalues' filters from blowing up
WHITEN_PICTURES = 5000  # the training pictures the patch covariance is estimated on


class AirNet(Classifier):
    def __init__(self, num_classes: int, in_chans: int = 3, widths=(32, 64, 128), second_conv=(0, 1, 1),
                 stem: int = 0, act: str = "relu", whiten: int = 0):
        super().__init__()
        widths, second_conv = _ints(widths, "widths"), _ints(second_conv, "second_conv")
        if len(second_conv) != len(widths):
            raise ValueError(f"second_conv needs one 0/1 per group ({len(widths)}), got {second_conv}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
        activation = ACTIVATIONS[act]
        blocks: dict[str, nn.Module] = {}
        previous = in_chans
        if whiten:
            conv = nn.Conv2d(in_chans, 2 * in_chans * 4, 2, padding=0, bias=True)
            conv.weight.requires_grad_(False)  # fitted to the data, never trained (its bias is)
            blocks["whiten"] = nn.Sequential(conv, activation())
            previous = conv.out_channels
        if stem:
            blocks["stem"] = nn.Sequential(*_conv_bn_act(previous, stem, activation))
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

    @torch.no_grad()
    def fit_whitening(self, pictures: torch.Tensor, eps: float = WHITEN_EPS) -> None:
        """Set the whitening layer from normalised training pictures (N, C, H, W): filters are the
        eigenvectors of the 2x2 patches' (uncentred) covariance over sqrt(eigenvalue + eps), then their
        negatives (airbench's init_whitening_conv). A model without whiten=1 is left alone."""
        if not hasattr(self.features, "whiten"):
            return
        conv = self.features.whiten[0]
        channels = pictures.shape[1]
        patches = pictures.float().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * 4)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0).reshape(-1, channels, 2, 2)
        conv.weight.copy_(torch.cat([filters, -filters]))
        conv.bias.zero_()


@register("airnet", input_size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), fits_pictures=True)
def airnet(num_classes: int, in_chans: int, img_size: int, widths=(32, 64, 128), second_conv=(0, 1, 1),
           stem: int = 0, act: str = "relu", whiten: int = 0) -> AirNet:
    return AirNet(num_classes, in_chans, widths, second_conv, stem, act, int(whiten))
