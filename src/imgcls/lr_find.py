"""The learning-rate range test (Smith 2015; fastai's lr_find): train a few hundred batches with the
learning rate growing exponentially, smooth the loss, and suggest the lr in the middle of the longest
descent (fastai's default suggestion, "valley", looked for where the loss has begun to fall).
`imgcls lr-find` draws it; `train --lr auto` runs it on the built model first and trains with the
suggestion (restoring the weights it moved)."""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .build import Built, build_model, make_trainer
from .config import TrainConfig, config_from_dict
from .engine.checkpoint import write_csv
from .engine.optim import build_optimizer
from .engine.trainer import Callback
from .errors import UserError

log = logging.getLogger(__name__)

START_LR, END_LR, STEPS = 1e-7, 10.0, 200


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed (exponential moving average, bias-corrected)
    suggestion: float
    folder: Path | None = None  # where lr_find.png was written


# The valley starts where the smoothed loss has fallen this far below its level after the skipped first
# tenth. Before that the curve is flat (at 1e-7..1e-5 the lr moves nothing) and its noise alone makes
# "decreasing" points, so fastai's longest descent could begin anywhere in it: on Fashion-MNIST the
# valley then wandered from 8.7e-4 to 2.2e-3 over three seeds, and from the 2 % drop on it is
# 3.5e-3 to 5.1e-3 (bench/RESULTS.md, issue 15).
DESCENT_DROP = 0.02


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's "valley": the longest stretch over which the loss keeps falling, and the lr half way
    down it (a third plus a sixth; points in the first tenth and the last five are ignored, as fastai does),
    searched from where the loss has fallen DESCENT_DROP below its starting level (the whole curve if never)."""
    start, stop = len(losses) // 10, max(len(losses) // 10 + 2, len(losses) - 5)
    falling = next((i for i in range(start, stop) if losses[i] < (1 - DESCENT_DROP) * losses[start]), None)
    if falling is not None and stop - falling >= 3:
        start = falling
    lrs, losses = lrs[start:stop], losses[start:stop]
    n = len(losses)
    if n < 3:
        return float(lrs[len(lrs) // 2]) if lrs else 1e-3
    # Longest decreasing subsequence ending at each point: O(n²), n is a few hundred.
    length = [1] * n
    end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and length[i] < length[j] + 1:
                length[i] = length[j] + 1
        if length[i] > length[end]:
            end = i
    begin = end - length[end] + 1
    third = (end - begin) / 3
    return float(lrs[begin + int(third) + int(third / 2)])


class _Enough(Exception):
    """The range test has its batches, or its loss diverged."""


class _GrowingLr:
    """The Schedule interface for the range test: every batch multiplies each group's lr by `gamma`
    (a backbone's --backbone-lr-mult stays a multiple of the head's)."""

    def __init__(self, optimizer: torch.optim.Optimizer, gamma: float):
        self.optimizer, self.gamma = optimizer, gamma

    def after_batch(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= self.gamma

    def after_epoch(self, val_loss: float) -> None: ...


class _LossRecorder(Callback):
    """The smoothed loss after every batch (exponential average, β 0.98, bias-corrected); stops the test
    after `steps` batches, or once the loss is not finite or above 4x its best."""

    def __init__(self, start_lr: float, gamma: float, steps: int):
        self.start_lr, self.gamma, self.steps = start_lr, gamma, steps
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.average, self.best = 0.0, math.inf

    def on_batch_end(self, trainer, batch: int, loss: torch.Tensor) -> None:
        value = loss.item()
        self.average = 0.98 * self.average + 0.02 * value
        smoothed = self.average / (1 - 0.98 ** (len(self.losses) + 1))
        self.lrs.append(self.start_lr * self.gamma ** len(self.losses))
        self.losses.append(smoothed)
        self.best = min(self.best, smoothed)
        if not math.isfinite(value) or smoothed > 4 * self.best or len(self.losses) >= self.steps:
            raise _Enough


def range_test(config: TrainConfig, built: Built, device: torch.device, steps: int = STEPS, start_lr: float = START_LR,
               end_lr: float = END_LR) -> RangeTest:
    """Run the test through the training engine (train's loss weights, mixing and precision, on `built`'s
    training loader, epoch after epoch until `steps` batches) and put the weights, buffers and
    BatchNorm statistics back as they were."""
    saved = copy.deepcopy(built.model.state_dict())
    optimizer = build_optimizer(built.model, config.optimizer, start_lr, config.momentum, config.weight_decay,
                                config.backbone_lr_mult, config.norm_weight_decay)
    gamma = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    recorder = _LossRecorder(start_lr, gamma, steps)
    trainer = make_trainer(config, built, optimizer, _GrowingLr(optimizer, gamma), device, callbacks=[recorder],
                           ema=False)
    try:
        while True:
            begun = len(recorder.losses)
            try:
                trainer.train_one_epoch(built.train_loader)
            except _Enough:
                break
            if len(recorder.losses) == begun:
                raise UserError(f"Received: a training split with fewer pictures than one batch "
                                f"({config.batch_size}); expected more pictures or a smaller --batch-size")
    finally:
        built.model.load_state_dict(saved)
    finite = [(lr, v) for lr, v in zip(recorder.lrs, recorder.losses) if math.isfinite(v)]
    lrs, losses = [lr for lr, _ in finite], [v for _, v in finite]
    return RangeTest(lrs, losses, valley(lrs, losses))


def write_range_test(folder: Path, result: RangeTest) -> None:
    """lr_find.png (the curve, the suggestion marked) and lr_find.csv (lr, smoothed loss)."""
    from .report.plots import plot_lr_find, save_figure

    write_csv(folder / "lr_find.csv", ["lr", "smoothed_loss"],
              ([f"{lr:.6g}", f"{v:.6f}"] for lr, v in zip(result.lrs, result.losses)))
    save_figure(plot_lr_find(result.lrs, result.losses, result.suggestion), folder / "lr_find.png")


def lr_find(config: TrainConfig | None = None, *, out: str | Path | None = None, steps: int = STEPS,
            **overrides) -> RangeTest:
    """The range test on `config`'s data and model (train's own stages: same split, loaders and
    freezing); writes lr_find.png and lr_find.csv into `out` (default runs/lr-find, numbered)."""
    from .data.prepare import load_training_samples, prepare_data
    from .engine.device import resolve_device, seed_everything
    from .engine.distributed import Dist
    from .models.registry import get_spec
    from .runs import RunFolder

    from .data.split_folders import for_training

    config = config_from_dict(overrides, config)
    config.data = for_training(config.data)
    config.validate()
    if config.lr == "auto":
        config.lr = None
    device = resolve_device(config.device)
    generator = seed_everything(config.data.seed)
    samples, excluded = load_training_samples(config.data, config.class_names)
    folder = RunFolder.new(str(out) if out is not None else None, "lr-find")
    data = prepare_data(config.data, samples, excluded, folder, resuming=False, spec=get_spec(config.model),
                        model_args=config.model_args, resize=config.resize_mode(), cache=config.cache_settings(),
                        crop=config.crop_fraction())
    built = build_model(config, data, device, generator, Dist())
    result = range_test(config, built, device, steps)
    write_range_test(folder.path, result)
    log.info("lr-find: %d steps from %.0e; suggested lr %.2e (valley) → %s", len(result.lrs), START_LR,
             result.suggestion, folder.path / "lr_find.png")
    result.folder = folder.path
    return result
