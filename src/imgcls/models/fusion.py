"""Several backbones' pooled features, concatenated, then BatchNorm1d and an MLP head (the Dogs vs. Cats
walkthrough's ResNet-50 + Inception-v3 model, for any list of backbones).

The model takes the decoded picture scaled to [0, 1] at the largest member's size; each member
resizes and normalises it its own way, so one decoded cache serves them all and an exported model
carries its whole preprocessing.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .base import Classifier, FrozenSplit
from .registry import create_model, get_spec, register

DEFAULT_BACKBONES = "resnet50,inception_v3"
DEFAULT_HEAD = "2048,1024,512"


def _names(backbones: str | list[str]) -> list[str]:
    names = [b.strip() for b in backbones.split(",")] if isinstance(backbones, str) else list(backbones)
    names = [n for n in names if n]
    if not names or len(set(names)) < len(names) or "fusion" in names:
        raise UserError(f"Received: backbones={backbones!r}; expected distinct model names, e.g. {DEFAULT_BACKBONES}")
    return names


def _widths(head: str | list[int]) -> list[int]:
    try:
        return [int(w) for w in head.split(",") if w.strip()] if isinstance(head, str) else [int(w) for w in head]
    except ValueError:
        raise UserError(f"Received: head={head!r}; expected hidden widths like {DEFAULT_HEAD}") from None


def fusion_input_size(model_args: dict) -> int:
    return max(get_spec(n).input_size for n in _names(model_args.get("backbones", DEFAULT_BACKBONES)))


def resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in): antialiased bilinear resizing along one axis as a matrix. torch's antialiased
    resize is separable and linear, so interpolating the identity's rows reads its weights off exactly."""
    eye = torch.eye(size_in).view(size_in, 1, 1, size_in)
    return F.interpolate(eye, size=(1, size_out), mode="bilinear", antialias=True, align_corners=False).view(
        size_in, size_out).T.contiguous()


class Fusion(Classifier):
    def __init__(self, num_classes: int, backbones: str | list[str] = DEFAULT_BACKBONES,
                 head: str | list[int] = DEFAULT_HEAD, dropout: float = 0.0, img_size: int | None = None):
        super().__init__()
        self.members = nn.ModuleDict()
        names = _names(backbones)
        input_size = img_size or max(get_spec(n).input_size for n in names)  # the decoded picture's side
        self.sizes, self.means, self.stds = {}, {}, {}
        for name in names:
            spec = get_spec(name)
            # Each member at its own size; a smaller --img-size caps them all (fast small-scale runs).
            size = min(spec.input_size, img_size or spec.input_size)
            member = create_model(name, 1, 3, size)
            member.head = nn.Identity()  # only its pooled features are used
            self.members[name] = member
            self.sizes[name] = size
            if size != input_size:  # computed here, outside any ONNX trace (a buffer, not in the state dict)
                self.register_buffer(f"resize_{name}", resize_matrix(input_size, size), persistent=False)
            self.register_buffer(f"mean_{name}", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std_{name}", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.num_features = sum(m.num_features for m in self.members.values())
        layers: list[nn.Module] = [nn.BatchNorm1d(self.num_features)]
        width = self.num_features
        for hidden in _widths(head):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])
            width = hidden
        self.head = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def _prepare(self, name: str, x: torch.Tensor) -> torch.Tensor:
        size = self.sizes[name]
        if x.shape[-1] != size or x.shape[-2] != size:
            matrix = getattr(self, f"resize_{name}", None)
            if torch.onnx.is_in_onnx_export() and matrix is not None and matrix.shape[1] == x.shape[-1] == x.shape[-2]:
                x = matrix @ x @ matrix.T  # ONNX has no antialiased resize: the same linear map, as two MatMuls
            else:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (x - getattr(self, f"mean_{name}")) / getattr(self, f"std_{name}")

    def block_groups(self) -> list[list[tuple[str, nn.Module]]]:
        return [[(f"{name}.{block}", module) for block, module in member.blocks()]
                for name, member in self.members.items()]

    def blocks(self) -> list[tuple[str, nn.Module]]:
        raise TypeError("a fusion model has one block list per member: use block_groups()")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.forward_features(self._prepare(n, x)) for n, m in self.members.items()], 1)

    def split_frozen(self, keep_last: int = 0) -> FrozenSplit | None:
        cuts = {name: member.frozen_prefix(keep_last) for name, member in self.members.items()}
        if min(cuts.values()) == 0:
            return None

        def prefix(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(m.forward_blocks(self._prepare(n, x), 0, cuts[n]) for n, m in self.members.items())

        def rest(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return self.forward_head(torch.cat([m.forward_blocks(z, cuts[n]) for (n, m), z
                                                in zip(self.members.items(), parts)], 1))
        modules = [block for n, m in self.members.items() for _, block in m.blocks()[:cuts[n]]]
        return prefix, rest, modules

    def load_pretrained(self) -> None:
        for name, member in self.members.items():
            if not hasattr(member, "load_pretrained"):
                raise UserError(f"Received: --pretrained with backbone {name}, which has no pretrained weights; "
                                "expected torchvision models or efficientnet_lite0, _lite1, _lite2")
            member.load_pretrained()


@register("fusion", input_size=299, channels=3,
          mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size_from_args=fusion_input_size)
def fusion(num_classes: int, in_chans: int, img_size: int, backbones: str | list[str] = DEFAULT_BACKBONES,
           head: str | list[int] = DEFAULT_HEAD, dropout: float = 0.0) -> Fusion:
    if in_chans != 3:
        raise UserError(f"Received: channels={in_chans} for fusion; expected colour pictures (3 channels)")
    return Fusion(num_classes, backbones, head, dropout, img_size)
