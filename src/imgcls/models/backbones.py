"""Pretrained backbones: any torchvision classification model by name, weights from torchvision's
weights API or a local file, freezing by block, and per-group learning rates.

A torchvision model keeps its own module names under `body.`, so a state dict in torchvision's key
layout (its pretrained files, or a user's fine-tuned copy) loads into it directly.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UserError
from .base import Classifier, has_params, is_frozen
from .registry import ModelSpec


def _tv():
    """torchvision.models, imported on first use: the import takes seconds, which a run of a small
    imgcls model (and every `imgcls predict` of one) need not pay."""
    import torchvision.models
    return torchvision.models

log = logging.getLogger(__name__)

# Inception-v3's pretrained weights expect (x - 0.5) / 0.5; torchvision gets there with transform_input,
# which re-normalises ImageNet-normalised input. Normalising with 0.5 directly is the same and simpler.
_MEAN_STD_OVERRIDES = {"inception_v3": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
_BUILD_ARGS = {"inception_v3": dict(aux_logits=False, init_weights=True, transform_input=False),
               "googlenet": dict(aux_logits=False, init_weights=True, transform_input=False)}


def torchvision_spec(name: str) -> ModelSpec | None:
    """A registry entry for a torchvision classification model; size and normalisation from its weights."""
    if name not in _tv().list_models(module=_tv()):
        return None
    weights = _tv().get_model_weights(name).DEFAULT
    preset = weights.transforms()
    mean, std = _MEAN_STD_OVERRIDES.get(name, (tuple(preset.mean), tuple(preset.std)))
    return ModelSpec(name, lambda num_classes, in_chans, img_size: TorchvisionBackbone(name, num_classes, in_chans),
                     f"torchvision {name}; --pretrained loads {weights}", int(preset.crop_size[0]), 3, mean, std)


def _final_linear(body: nn.Module) -> tuple[str, nn.Linear]:
    """The last Linear layer in registration order: torchvision's classifier (fc, classifier.1, heads.head)."""
    linears = [(name, m) for name, m in body.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("Received: a model without a final Linear layer; expected a torchvision classifier")
    return linears[-1]


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _adapt_first_conv(body: nn.Module, in_chans: int) -> None:
    """Greyscale (or other) input: a first convolution with `in_chans` inputs (pretrained weights are
    summed over colour channels when they load, as timm does)."""
    for path, conv in body.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            _replace(body, path, nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride,
                                           conv.padding, conv.dilation, conv.groups, conv.bias is not None))
            return


def _family_blocks(name: str, body: nn.Module) -> list[tuple[str, nn.Module]]:
    """The trunk as named blocks in execution order; unknown families are one block (the whole body)."""
    flatten = nn.Flatten(1)
    if all(hasattr(body, a) for a in ("conv1", "layer4", "avgpool")):  # resnet, resnext, wide_resnet
        stem = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool)
        return ([("stem", stem)] + [(f"layer{i}", getattr(body, f"layer{i}")) for i in range(1, 5)]
                + [("pool", nn.Sequential(body.avgpool, flatten))])
    if hasattr(body, "trunk_output"):  # regnet
        return ([("stem", body.stem)] + [(n, m) for n, m in body.trunk_output.named_children()]
                + [("pool", nn.Sequential(body.avgpool, flatten))])
    if name in _BUILD_ARGS:  # inception_v3, googlenet: children in forward order, minus aux and head
        skip = {"aux1", "aux2", "AuxLogits", "avgpool", "dropout", "fc"}
        return ([(n, m) for n, m in body.named_children() if n not in skip]
                + [("pool", nn.Sequential(body.avgpool, flatten, body.dropout))])
    features, classifier = getattr(body, "features", None), getattr(body, "classifier", None)
    if isinstance(features, nn.Sequential) and isinstance(classifier, nn.Sequential) and hasattr(body, "avgpool"):
        # efficientnet, mobilenet_v3, convnext, vgg: features → avgpool → (flatten) → classifier[:-1]
        neck = list(classifier)[:-1]
        has_flatten = any(isinstance(m, nn.Flatten) for m in neck)
        return ([(f"features.{n}", m) for n, m in features.named_children()]
                + [("pool", nn.Sequential(body.avgpool, *([] if has_flatten else [flatten]), *neck))])
    return [("body", body)]


class TorchvisionBackbone(Classifier):
    """A torchvision classifier whose final Linear layer becomes `head`; everything before it is features."""

    def __init__(self, name: str, num_classes: int, in_chans: int = 3):
        super().__init__()
        self.name = name
        body = _tv().get_model(name, weights=None, **_BUILD_ARGS.get(name, {}))
        path, last = _final_linear(body)
        self.num_features = last.in_features
        _replace(body, path, nn.Identity())
        if in_chans != 3:
            _adapt_first_conv(body, in_chans)
        self.body = body
        self.head = nn.Linear(self.num_features, num_classes)
        # A tuple, not a ModuleList: the blocks are views of `body`, whose names stay torchvision's.
        self._blocks = tuple(_family_blocks(name, body))

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return list(self._blocks)

    def load_pretrained(self) -> None:
        weights = _tv().get_model_weights(self.name).DEFAULT
        load_matching(self.body, torch.load(_cached_download(weights.url), map_location="cpu", weights_only=True),
                      f"torchvision {weights}")


def _cached_download(url: str) -> Path:
    """torchvision's cache file for `url` (TORCH_HOME/hub/checkpoints), downloading it if it is missing."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    target = folder / Path(url).name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # an offline machine should fail in seconds, not hang
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception:  # noqa: BLE001 - any network failure means the same thing to the user
        raise UserError(f"Received: --pretrained with no network and no cached weights; expected the file "
                        f"{target.name} in {folder} (download {url} there)") from None
    finally:
        socket.setdefaulttimeout(previous)
    return target


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the tensors of `state` whose names and shapes fit `module`, under its own names or with a
    `body.` prefix (torchvision layout into an imgcls model, or back); a classifier of another class
    count is left out, and 3-channel first convolutions are summed for greyscale input."""
    own = module.state_dict()
    candidates = [state, {f"body.{k}": v for k, v in state.items()},
                  {k[len("body."):]: v for k, v in state.items() if k.startswith("body.")}]
    best = max(candidates, key=lambda c: len(own.keys() & c.keys()))
    loaded, skipped = {}, []
    for key, value in best.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape != target.shape and value.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1 \
                and value.shape[0] == target.shape[0]:
            value = value.sum(1, keepdim=True)
        if value.shape == target.shape:
            loaded[key] = value
        else:
            skipped.append(key)
    if len(loaded) < len(own) // 2:
        raise UserError(f"Received: weights from {source} that fit {len(loaded)} of the model's {len(own)} "
                        "tensors; expected weights of the same architecture")
    module.load_state_dict(loaded, strict=False)
    missing = len(own) - len(loaded)
    log.info("loaded %d tensors from %s (%d left at their initial values%s)", len(loaded), source, missing,
             f"; skipped for another shape: {', '.join(skipped[:4])}" if skipped else "")


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """--weights FILE: a safetensors file, or a state dict read with torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Received: --weights {path}; expected an existing .safetensors or .pt/.pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a corrupt or foreign file is a user error
        raise UserError(f"Received: --weights {path} that could not be read as weights "
                        f"({type(error).__name__}); expected a safetensors file or a saved state dict") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a common checkpoint wrapping
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"Received: --weights {path} that holds no state dict; expected name → tensor")
    load_matching(model, state, str(path))


def load_pretrained(model: nn.Module, name: str) -> None:
    if not hasattr(model, "load_pretrained"):
        raise UserError(f"Received: --pretrained for {name}; expected a model with pretrained weights "
                        "(a torchvision model name, efficientnet_lite0, _lite1, _lite2 or fusion)")
    model.load_pretrained()


def apply_freezing(model: Classifier, freeze: str = "none", unfreeze: list[str] | tuple = (),
                   unfreeze_last: int | None = None) -> list[str]:
    """Freeze the backbone, then unfreeze named blocks or the last N blocks (with parameters) of each
    backbone; the head always trains. Returns the names of the blocks that train."""
    if freeze == "none" and not unfreeze and unfreeze_last is None:
        return [name for group in model.block_groups() for name, _ in group]
    groups = model.block_groups()
    known = {name for group in groups for name, _ in group}
    unknown = [n for n in unfreeze if n not in known]
    if unknown:
        raise UserError(f"Received: --unfreeze {','.join(unknown)}; expected block names of this model: "
                        f"{', '.join(sorted(known))}")
    training = []
    for group in groups:
        with_params = [(n, b) for n, b in group if has_params(b)]
        last = set(n for n, _ in with_params[len(with_params) - unfreeze_last:]) if unfreeze_last else set()
        for name, block in group:
            trains = name in unfreeze or name in last
            block.requires_grad_(trains)
            if trains:
                training.append(name)
    return training


def describe_freezing(model: Classifier) -> str:
    groups = model.block_groups()
    frozen = sum(is_frozen(b) and has_params(b) for g in groups for _, b in g)
    total = sum(has_params(b) for g in groups for _, b in g)
    return f"{frozen} of {total} backbone blocks frozen"
