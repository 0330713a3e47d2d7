"""timm's model zoo by name: `--model timm/<architecture>[.<tag>]` (timm/resnet18,
timm/convnext_tiny.fb_in22k_ft_in1k, timm/vit_small_patch16_224.augreg_in21k).

The pretrained config (input size, mean/std, crop fraction, interpolation) decides the model's
preprocessing and is recorded in the model card. `--pretrained` loads through timm's own loading and the
Hugging Face cache ($HF_HOME); offline with no cached file, one line names the file and where to put it.
The trunk is split into blocks by the family's layout where it is a chain of modules (ResNets, ConvNeXts,
EfficientNets and the like), so --unfreeze-last, the frozen-feature cache and Grad-CAM's layer choice work
as for torchvision's models; any other architecture (ViTs) is one `features` block and a `pool` block.
timm is an optional extra: `pip install imgcls[timm]`.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

from ..errors import UserError
from .base import Classifier
from .registry import ModelSpec

log = logging.getLogger(__name__)

PREFIX = "timm/"

# Families whose forward_features is their children in this order, and what forward_head uses: a model
# whose children are exactly these is split into these blocks (stages/blocks one block per stage).
_CHAINS = (
    (("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"), {"global_pool", "fc"}),  # resnet
    (("stem", "stages", "norm_pre"), {"head"}),  # convnext
    (("conv_stem", "bn1", "blocks", "conv_head", "bn2"), {"global_pool", "classifier"}),  # efficientnet
)

def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("Received: a timm/ model without timm installed; expected `pip install imgcls[timm]`") from None
    return timm


def timm_spec(name: str) -> ModelSpec | None:
    """A registry entry for `timm/<architecture>[.<tag>]`, or None when `name` is not a timm/ name."""
    if not name.startswith(PREFIX):
        return None
    timm = _timm()
    model_name = name[len(PREFIX):]
    architecture = model_name.split(".")[0]
    if not timm.is_model(architecture):
        import difflib

        close = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.7)
        raise UserError(f"Received: model {name!r}, not a timm architecture; expected a name timm.list_models() "
                        f"lists{' such as ' + ', '.join(PREFIX + c for c in close) if close else ''}")
    cfg = timm.models.get_pretrained_cfg(model_name) if timm.is_model_pretrained(model_name) else None
    cfg = cfg.to_dict() if cfg is not None else {}
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    mean = tuple(cfg.get("mean") or (0.485, 0.456, 0.406))
    std = tuple(cfg.get("std") or (0.229, 0.224, 0.225))
    recorded = {"source": "timm", "name": model_name, "hf_hub_id": cfg.get("hf_hub_id"),
                "input_size": size, "crop_pct": cfg.get("crop_pct"), "interpolation": cfg.get("interpolation"),
                "mean": list(mean), "std": list(std)}
    weights = f"--pretrained loads {cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else "no pretrained weights in timm"
    return ModelSpec(name, lambda num_classes, in_chans, img_size, **kw: TimmBackbone(model_name, num_classes, in_chans,
                                                                                     img_size, **kw),
                     f"timm {model_name}; {weights}", size, 3, mean, std, pretrained_cfg=recorded)


class _Call(nn.Module):
    """A block that calls one of the body's methods on its input. The modules it runs are registered
    here too, so that freezing and "has parameters" see them; the block is no submodule of the model,
    so their weights are saved once, under `body.`."""

    def __init__(self, body: nn.Module, method: str, modules: dict[str, nn.Module],
                 parameters: dict[str, nn.Parameter] | None = None, **kwargs):
        super().__init__()
        self._body = (body,)
        self.method, self.kwargs = method, kwargs
        for name, module in modules.items():
            self.add_module(name, module)
        for name, parameter in (parameters or {}).items():  # a ViT's cls_token and pos_embed
            self.register_parameter(name, parameter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self._body[0], self.method)(x, **self.kwargs)


class TimmBackbone(Classifier):
    """A timm model without its classifier (num_classes=0: its forward gives pooled features) and a Linear
    head. Its weights keep timm's names under `body.`, so timm's own files load into it directly."""

    def __init__(self, model_name: str, num_classes: int, in_chans: int = 3, img_size: int | None = None,
                 **kwargs):
        super().__init__()
        timm = _timm()
        self.model_name = model_name
        extra = dict(kwargs)
        cfg = timm.models.get_pretrained_cfg(model_name) if timm.is_model_pretrained(model_name) else None
        if img_size is not None and getattr(cfg, "fixed_input_size", False):
            extra["img_size"] = img_size  # ViTs and the like are built for one input size
        try:
            self.body = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans, **extra)
        except TypeError as error:
            raise UserError(f"Received: model arguments {kwargs} for timm/{model_name}; {error}") from None
        self.in_chans = in_chans
        # the width forward_head(pre_logits=True) gives: wider than num_features where the head has a conv (MobileNetV3)
        self.num_features = getattr(self.body, "head_hidden_size", None) or self.body.num_features
        self.head = nn.Linear(self.num_features, num_classes)
        self._blocks = tuple(_timm_blocks(self.body))

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return list(self._blocks)

    def load_pretrained(self) -> None:
        """timm's pretrained weights: the Hugging Face cache's copy when there is one (no network used),
        else a download through timm, refused in one line at once where the hub cannot be reached."""
        timm = _timm()
        cfg = timm.models.get_pretrained_cfg(self.model_name)
        hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub:
            raise UserError(f"Received: --pretrained for timm/{self.model_name}, which has no pretrained weights in "
                            "timm; expected a name with a tag (timm.list_pretrained()), or --weights FILE")
        cached = _cached_file(hub)
        if cached is None and not _reachable("huggingface.co"):
            raise UserError(f"Received: --pretrained for timm/{self.model_name} with no network and no cached weights; "
                            f"expected model.safetensors of hf-hub:{hub} in the Hugging Face cache {_hub_cache()} "
                            f"(on a machine with network: `huggingface-cli download {hub}`, then copy the cache), "
                            "or --weights FILE")
        overlay = {"file": cached} if cached else None
        pretrained = timm.create_model(self.model_name, pretrained=True, num_classes=0, in_chans=self.in_chans,
                                       pretrained_cfg_overlay=overlay)
        self.body.load_state_dict(pretrained.state_dict())
        log.info("loaded timm/%s's pretrained weights from %s", self.model_name, cached or f"hf-hub:{hub}")


def _hub_cache() -> str:
    """The Hugging Face cache folder, read from the environment now ($HF_HUB_CACHE, else $HF_HOME/hub)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


def _cached_file(hub: str) -> str | None:
    """The weights file of `hub` in the Hugging Face cache, if one is there (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub, filename, cache_dir=_hub_cache())
        if isinstance(found, str):
            return found
    return None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False

def _timm_blocks(body: nn.Module) -> list[tuple[str, nn.Module]]:
    """The trunk as blocks whose composition is forward_features, then `pool` (forward_head's pooling)."""
    children = dict(body.named_children())
    own = dict(body.named_parameters(recurse=False))  # tensors on the body itself belong to the features
    for chain, head in _CHAINS:
        if set(children) == set(chain) | head and not own:
            blocks = []
            for name in chain:
                module = children[name]
                if name in ("stages", "blocks") and isinstance(module, nn.Sequential):
                    blocks += [(f"{name}.{i}", m) for i, m in module.named_children()]
                else:
                    blocks.append((name, module))
            return blocks + [("pool", _Call(body, "forward_head", {n: children[n] for n in head}, pre_logits=True))]
    head = {n: m for n, m in children.items() if n in ("head", "fc", "classifier", "global_pool", "fc_norm",
                                                         "head_drop", "norm")}
    trunk = {n: m for n, m in children.items() if n not in head}
    return [("features", _Call(body, "forward_features", trunk, own)),
            ("pool", _Call(body, "forward_head", head, pre_logits=True))]
