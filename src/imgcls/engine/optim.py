"""Optimisers and learning-rate schedules by name, with each optimiser's usual default learning rate."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError

DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "sgd": 1e-2, "rmsprop": 1e-3}


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0,
                 norm_weight_decay: float | None = None, bias_lr_mult: float = 1.0) -> list[dict]:
    """The head at `lr`, every other trainable parameter at lr * backbone_lr_mult (fastai's discriminative
    lr); norm layers' weights and every bias (the 0- and 1-dimensional tensors, timm's
    param_groups_weight_decay rule) at `norm_weight_decay`, the rest at `weight_decay`
    (norm_weight_decay=None: the same for all, torchvision's --norm-weight-decay default). bias_lr_mult:
    those small tensors' lr times this and their decay divided by it, so that SGD's lr x decay stays as
    it was (airbench's BatchNorm biases at 64x)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in model.head.parameters()} if hasattr(model, "head") else set()
    by_lr = ([(trainable, lr)] if backbone_lr_mult == 1.0 or not head else
             [([p for p in trainable if id(p) in head], lr),
              ([p for p in trainable if id(p) not in head], lr * backbone_lr_mult)])
    groups = []
    for params, group_lr in by_lr:
        small_decay = weight_decay if norm_weight_decay is None else norm_weight_decay
        if small_decay == weight_decay and bias_lr_mult == 1.0:
            groups.append({"params": params, "lr": group_lr, "weight_decay": weight_decay})
            continue
        groups.append({"params": [p for p in params if p.ndim > 1], "lr": group_lr, "weight_decay": weight_decay})
        groups.append({"params": [p for p in params if p.ndim <= 1], "lr": group_lr * bias_lr_mult,
                       "weight_decay": small_decay / bias_lr_mult})
    return [g for g in groups if g["params"]]


def build_optimizer(params, name: str, lr: float | None, momentum: float = 0.9,
                    weight_decay: float = 0.0, backbone_lr_mult: float = 1.0,
                    norm_weight_decay: float | None = None, nesterov: bool = False,
                    lookahead: int = 0, bias_lr_mult: float = 1.0) -> torch.optim.Optimizer:
    """`params` is a model (its trainable parameters, the backbone's at lr * backbone_lr_mult, norm
    layers and biases at norm_weight_decay and lr * bias_lr_mult: param_groups) or a list of parameter
    groups. nesterov: SGD's Nesterov momentum; lookahead=k > 0 wraps the optimiser in Lookahead (every k
    steps, airbench's use)."""
    base = _base_optimizer(params, name, lr, momentum, weight_decay, backbone_lr_mult, norm_weight_decay, nesterov,
                           bias_lr_mult)
    return Lookahead(base, k=lookahead) if lookahead else base


def _base_optimizer(params, name, lr, momentum, weight_decay, backbone_lr_mult, norm_weight_decay, nesterov,
                    bias_lr_mult=1.0):
    if nesterov and (name != "sgd" or momentum <= 0):
        raise UserError(f"Received: --nesterov with optimizer={name}, momentum={momentum}; expected sgd with a "
                        "momentum above 0")
    lr = lr if lr is not None else DEFAULT_LR.get(name, 1e-3)
    if isinstance(params, nn.Module):
        params = param_groups(params, lr, backbone_lr_mult, weight_decay, norm_weight_decay, bias_lr_mult)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=0.0, weight_decay=weight_decay)
    raise UserError(f"Received: optimizer={name}; expected one of {', '.join(DEFAULT_LR)}")


class Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang et al. 2019, "k steps forward, 1 step back"; airbench uses it): the base optimiser
    takes the steps, and every `k` of them the slow weights move `alpha` of the way to the fast ones and
    the fast weights start again from them. The slow weights start at the initial weights and are saved
    with the optimiser's state (resume continues them). Shares the base's param_groups, so schedules and
    per-group learning rates work unchanged (timm's Lookahead does the same)."""

    def __init__(self, base: torch.optim.Optimizer, alpha: float = 0.5, k: int = 5):
        # torch.optim.Optimizer.__init__ is not called on purpose: the groups and state are the base's.
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        if k < 1 or not 0 < alpha <= 1:
            raise UserError(f"Received: lookahead k={k}, alpha={alpha}; expected k >= 1 and 0 < alpha <= 1")
        self.base, self.alpha, self.k, self.steps = base, alpha, k, 0
        self.param_groups, self.defaults, self.state = base.param_groups, base.defaults, base.state
        self.slow = [p.detach().clone() for p in self._params()]

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.base.step(closure)
        self.steps += 1
        if self.steps % self.k == 0:
            for fast, slow in zip(self._params(), self.slow):
                slow.add_(fast - slow, alpha=self.alpha)
                fast.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {**self.base.state_dict(), "lookahead": {"steps": self.steps, "slow": [s.clone() for s in self.slow]}}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        kept = state_dict.pop("lookahead", None)
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups
        if kept is not None:
            self.steps = int(kept["steps"])
            for slow, saved in zip(self.slow, kept["slow"]):
                slow.copy_(saved)


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
