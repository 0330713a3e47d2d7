"""The one training loop every command uses: fit → epochs → batches, with a few named events.

Callbacks see four events (fit start, batch end, epoch end, fit end); checkpointing, progress
display and the run folder are callbacks, not flags inside the loop (fastai's callback/core.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from .. import stopping
from ..choices import KEEP_EPOCHS as KEEP
from ..tasks import get_task
from .distributed import all_reduce_sum, global_count, world_size
from .optim import Schedule


@dataclass
class TrainState:
    """What the loop knows between epochs; saved with every checkpoint so --resume continues exactly."""

    epoch: int = 0  # epochs completed
    best_loss: float = math.inf
    best_score: float = -math.inf  # the best validation headline (accuracy; micro-F1 for several labels)
    best_epoch: int = 0  # the epoch kept (--keep)
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)


class Callback:
    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_batch_end(self, trainer: "Trainer", batch: int, loss: torch.Tensor) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", row: dict, improved: bool) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...


@torch.no_grad()
def predict_proba(model: nn.Module, loader: Iterable, tta: bool = False, task=None) -> tuple[np.ndarray, float, float]:
    """The task's probabilities for every batch of `loader` (softmax by default), with the mean loss and
    accuracy on its labels. tta=True averages them with those of the horizontally flipped pictures."""
    task = task or get_task("single-label")
    model.eval()
    probs, total_loss, correct, count = [], 0.0, 0, 0
    for images, labels in loader:
        stopping.check()
        flipped = model(images.flip(-1)) if tta else None
        prob, loss, right = task.evaluate_batch(model(images), labels, flipped)
        total_loss += loss
        correct += right
        count += len(labels)
        probs.append(prob.cpu())
    matrix = torch.cat(probs).numpy() if probs else np.zeros((0, 0), dtype=np.float32)
    return matrix, total_loss / max(count, 1), correct / max(count, 1)


def warmed_up_ema(decay: float) -> Callable:
    """AveragedModel's update for an EMA whose decay warms up as TensorFlow's ExponentialMovingAverage
    does with num_updates: min(decay, (1 + n) / (10 + n)) at the n-th update. Without it a short run keeps
    the first step's near-random weights in the average (0.999 over 1,125 steps: 32 % of it)."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        n = int(num_averaged)
        weight = 1 - min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            for a, c in zip(averaged, current):
                a.copy_(c)
    return update


class Trainer:
    """The task's loss (cross-entropy, or binary cross-entropy for several labels) with best-epoch
    selection by validation loss and optional early stopping."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
                 callbacks: Iterable[Callback] = (), early_stop: int = 0, max_batches: int | None = None,
                 generator: torch.Generator | None = None, label_smoothing: float = 0.0,
                 batch_transform: Callable | None = None, train_model: nn.Module | None = None,
                 eval_model: nn.Module | None = None, autocast: torch.dtype | None = None,
                 class_weight: torch.Tensor | None = None, ema_decay: float = 0.0, task=None,
                 keep: str = "best-loss", val_every: int = 1):
        if keep not in KEEP:
            raise ValueError(f"keep={keep!r}; expected one of {', '.join(KEEP)}")
        self.keep = keep  # which epoch's weights are the run's (KEEP)
        self.val_every = val_every  # validate every this many epochs, and after the last
        self.task = task or get_task("single-label")
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.callbacks = list(callbacks)
        self.early_stop = early_stop
        self.max_batches = max_batches
        self.generator = generator
        self.label_smoothing = label_smoothing
        self.batch_transform = batch_transform  # (images, labels) → (images, targets), e.g. MixUp
        # (`is None`, not `or`: a compiled module has no truth value)
        self.train_model = model if train_model is None else train_model  # e.g. DDP or torch.compile of `model`
        self.eval_model = model if eval_model is None else eval_model  # e.g. the tail over cached frozen features
        self.autocast = autocast  # e.g. torch.bfloat16: forward and loss under mixed precision
        self.class_weight = class_weight  # per-class loss weights (--class-weight balanced); validation stays plain
        # --ema: an exponential moving average of the weights (and BatchNorm statistics), updated after every
        # step; it is what validation scores and what the run saves (timm's --model-ema, Keras' use_ema).
        self.ema = None
        if ema_decay:
            from torch.optim.swa_utils import AveragedModel
            self.ema = AveragedModel(model, multi_avg_fn=warmed_up_ema(ema_decay), use_buffers=True)
            self.eval_model = self.ema.module
        self.state = TrainState()
        self.epochs = 0
        self.best_val_probs: np.ndarray | None = None  # the best epoch's validation probabilities (this process)

    def _emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def train_one_epoch(self, loader) -> tuple[float, float]:
        self.train_model.train()
        total_loss = torch.zeros(())
        correct = torch.zeros((), dtype=torch.long)
        count = 0
        for batch, (images, labels) in enumerate(loader):
            stopping.check()  # a SIGTERM whose exception Python swallowed stops here
            if self.max_batches is not None and batch >= self.max_batches:
                break
            targets = labels
            if self.batch_transform is not None:
                images, targets = self.batch_transform(images, labels)
            # The device comes from the labels: `images` may be a tuple (a fusion model's cached features).
            with torch.autocast(labels.device.type, self.autocast or torch.float32, enabled=self.autocast is not None):
                logits = self.train_model(images)
                summed = self.task.loss_sum(logits, targets, self.class_weight, self.label_smoothing)
                # Under torchrun each rank holds a slice of the global batch, slices may differ by a picture,
                # and DDP averages gradients over ranks: sum / (global count / ranks) makes that average the
                # global batch's mean loss, as in one process.
                loss = summed * (world_size() / global_count(len(labels), labels.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.schedule.after_batch()
            # Sums stay tensors: no device sync per batch on a GPU.
            total_loss = total_loss.to(loss.device) + summed.detach()
            correct = correct.to(labels.device) + self.task.correct(logits.detach(), targets)
            count += len(labels)
            self._emit("on_batch_end", batch, loss.detach())
        # Under torchrun every rank saw its own slice: sum over ranks (a no-op in one process).
        device = total_loss.device
        sums = all_reduce_sum(torch.stack([total_loss.float(), correct.to(device).float(),
                                           torch.tensor(float(count), device=device)]))
        return sums[0].item() / max(sums[2].item(), 1), sums[1].item() / max(sums[2].item(), 1)

    def fit(self, train_loader, val_loader, epochs: int) -> TrainState:
        """Train until `epochs` epochs are complete (counting those done before a resume)."""
        self.epochs = epochs
        self._emit("on_fit_start")
        while self.state.epoch < epochs and not self.state.stopped_early:
            start = time.perf_counter()
            train_loss, train_acc = self.train_one_epoch(train_loader)  # ends in a sync (.item()): timed right
            trained = round(time.perf_counter() - start, 3)
            state = self.state
            lr = self.optimizer.param_groups[0]["lr"]
            if (state.epoch + 1) % self.val_every and state.epoch + 1 < epochs:  # --val-every: not this epoch
                state.epoch += 1
                row = {"epoch": state.epoch, "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6),
                       "val_loss": math.nan, "val_acc": math.nan, "lr": lr,
                       "seconds": round(time.perf_counter() - start, 3), "train_seconds": trained}
                state.history.append(row)
                self._emit("on_epoch_end", row, False)
                continue
            val_probs, val_loss, val_acc = predict_proba(self.eval_model, val_loader, task=self.task)
            self.schedule.after_epoch(val_loss)
            state.epoch += 1
            lower_loss = val_loss < state.best_loss
            # The epoch kept: the lowest validation loss, the best headline (ties: the lower loss), or the last.
            improved = {"best-loss": lower_loss, "last": True,
                        "best-accuracy": val_acc > state.best_score or val_acc == state.best_score and lower_loss
                        }[self.keep]
            state.best_score = max(state.best_score, val_acc)
            if lower_loss:  # early stopping always watches the validation loss
                state.best_loss, state.bad_epochs = val_loss, 0
            else:
                state.bad_epochs += 1
                state.stopped_early = bool(self.early_stop) and state.bad_epochs >= self.early_stop
            if improved:
                state.best_epoch = state.epoch
                self.best_val_probs = val_probs
            row = {"epoch": state.epoch, "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6),
                   "val_loss": round(val_loss, 6), "val_acc": round(val_acc, 6), "lr": lr,
                   "seconds": round(time.perf_counter() - start, 3), "train_seconds": trained}
            state.history.append(row)
            self._emit("on_epoch_end", row, improved)
        self._emit("on_fit_end")
        return self.state

    def state_dict(self) -> dict:
        """Model, optimiser, schedule, RNG and loop state: tensors and plain data only (weights_only-loadable)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.generator.get_state() if self.generator is not None else torch.empty(0),
            "train_state": asdict(self.state),
            "ema": self.ema.state_dict() if self.ema is not None else {},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        if self.generator is not None and len(state["shuffle_rng"]):
            self.generator.set_state(state["shuffle_rng"])
        self.state = TrainState(**state["train_state"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])

    @property
    def weights_model(self) -> nn.Module:
        """The weights a run saves: the EMA copy's with --ema, else the model's."""
        return self.ema.module if self.ema is not None else self.model
