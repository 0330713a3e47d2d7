"""The one model registry: a name → a builder and the preprocessing the model expects.

Names are the CLI's `--model` values. Registering a name twice is an error (timm, torchvision do the same).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..errors import UserError
from .catalogue import DESCRIPTIONS


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture and its preprocessing contract (timm's default_cfg)."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    defaults: dict = field(default_factory=dict)
    size_from_args: Callable[[dict], int] | None = None  # e.g. fusion: the largest member's size
    fits_pictures: bool = False  # any size and channel count: train at the pictures' own (see train.py)
    pretrained_cfg: dict | None = None  # where the preprocessing came from (timm's pretrained config), for the card

    def size_for(self, model_args: dict) -> int:
        return self.size_from_args(model_args) if self.size_from_args else self.input_size


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, input_size: int, channels: int,
             mean: tuple[float, ...], std: tuple[float, ...],
             size_from_args: Callable[[dict], int] | None = None, fits_pictures: bool = False,
             **defaults) -> Callable:
    """Decorator: register `builder(num_classes, in_chans, img_size, **kwargs) -> nn.Module` under `name`;
    its description is the catalogue's (models/catalogue.py, what `imgcls models` lists without torch)."""
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, DESCRIPTIONS[name], input_size, channels, mean, std, defaults,
                                    size_from_args, fits_pictures)
        return builder
    return decorate


# torchvision and timm models by name, built the first time each is asked for; kept apart from the registered
# families so that listings and error messages do not depend on what this process looked up before.
_TORCHVISION: dict[str, ModelSpec] = {}


def get_spec(name: str) -> ModelSpec:
    _load_families()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name not in _TORCHVISION:
        from .backbones import torchvision_spec
        from .timm_models import timm_spec
        spec = timm_spec(name) or torchvision_spec(name)
        if spec is None:
            raise UserError(f"Received: model {name!r}; expected one of {', '.join(sorted(_REGISTRY))}, "
                            "a torchvision classification model name (resnet18, efficientnet_b0, ...) or timm/<name> "
                            "(timm/convnext_tiny, ...)")
        _TORCHVISION[name] = spec
    return _TORCHVISION[name]


# torchvision models `imgcls models` lists by default; any other torchvision name works too.
LISTED_TORCHVISION = ("resnet18", "resnet50", "inception_v3", "efficientnet_b0", "mobilenet_v3_large",
                      "convnext_tiny")


def list_models() -> list[ModelSpec]:
    """The registered families and the listed torchvision models, by name."""
    _load_families()
    specs = {**_REGISTRY, **{name: get_spec(name) for name in LISTED_TORCHVISION}}
    return [specs[name] for name in sorted(specs)]


def create_model(name: str, num_classes: int, in_chans: int | None = None, img_size: int | None = None,
                 **kwargs) -> nn.Module:
    """Build a registered model; in_chans and img_size default to the model's own."""
    spec = get_spec(name)
    args = {**spec.defaults, **kwargs}
    try:
        return spec.builder(num_classes=num_classes, in_chans=in_chans or spec.channels,
                            img_size=img_size or spec.size_for(args), **args)
    except (TypeError, ValueError) as error:
        raise UserError(f"Received: model arguments {kwargs} for {name}; {error}") from None


def channel_stats(values: tuple[float, ...], channels: int) -> list[float]:
    """A model's mean or std for `channels` channels (grey ↔ colour by averaging or repeating)."""
    if len(values) == channels:
        return list(values)
    if channels == 1:
        return [sum(values) / len(values)]
    return [values[0]] * channels


def _load_families() -> None:
    # Importing a family module registers its models; kept lazy so `import imgcls` stays light.
    from . import airnet, cifar_cnn, efficientnet_lite, fusion, lenet, simple_cnn  # noqa: F401
