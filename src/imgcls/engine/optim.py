"""Optimisers and learning-rate schedules by name, with each optimiser's usual default learning rate."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError

DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "sgd": 1e-2, "rmsprop": 1e-3}


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0,
                 norm_weight_decay: float | None = None) -> list[dict]:
    """The head at `lr`, every other trainable parameter at lr * backbone_lr_mult (fastai's discriminative
    lr); norm layers' weights and every bias (the 0- and 1-dimensional tensors, timm's
    param_groups_weight_decay rule) at `norm_weight_decay`, the rest at `weight_decay`
    (norm_weight_decay=None: the same for all, torchvision's --norm-weight-decay default)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in model.head.parameters()} if hasattr(model, "head") else set()
    by_lr = ([(trainable, lr)] if backbone_lr_mult == 1.0 or not head else
             [([p for p in trainable if id(p) in head], lr),
              ([p for p in trainable if id(p) not in head], lr * backbone_lr_mult)])
    groups = []
    for params, group_lr in by_lr:
        if norm_weight_decay is None or norm_weight_decay == weight_decay:
            groups.append({"params": params, "lr": group_lr, "weight_decay": weight_decay})
            continue
        groups.append({"params": [p for p in params if p.ndim > 1], "lr": group_lr, "weight_decay": weight_decay})
        groups.append({"params": [p for p in params if p.ndim <= 1], "lr": group_lr, "weight_decay": norm_weight_decay})
    return [g for g in groups if g["params"]]


def build_optimizer(params, name: str, lr: float | None, momentum: float = 0.9,
                    weight_decay: float = 0.0, backbone_lr_mult: float = 1.0,
                    norm_weight_decay: float | None = None) -> torch.optim.Optimizer:
    """`params` is a model (its trainable parameters, the backbone's at lr * backbone_lr_mult, norm
    layers and biases at norm_weight_decay) or a list of parameter groups."""
    lr = lr if lr is not None else DEFAULT_LR.get(name, 1e-3)
    if isinstance(params, nn.Module):
        params = param_groups(params, lr, backbone_lr_mult, weight_decay, norm_weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=0.0, weight_decay=weight_decay)
    raise UserError(f"Received: optimizer={name}; expected one of {', '.join(DEFAULT_LR)}")


class Schedule:
    """One interface over per-batch schedules (cosine, one-cycle) and per-epoch ReduceLROnPlateau."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, epochs: int, steps_per_epoch: int,
                 patience: int = 2):
        self.name = name
        total = max(1, epochs * steps_per_epoch)
        if name == "none":
            self.scheduler = None
        elif name == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=patience)
        elif name == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        elif name == "onecycle":
            max_lr = [group["lr"] for group in optimizer.param_groups]
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)
        else:
            raise UserError(f"Received: scheduler={name}; expected one of none, plateau, cosine, onecycle")

    def after_batch(self) -> None:
        if self.name in ("cosine", "onecycle"):
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.name == "plateau":
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)
