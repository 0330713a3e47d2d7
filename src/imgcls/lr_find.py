"""The learning-rate range test (Smith 2015; fastai's lr_find): train a few hundred batches with the
learning rate growing exponentially, smooth the loss, and suggest the lr in the middle of the longest
descent (fastai's default suggestion, "valley"). `imgcls lr-find` draws it; `train --lr auto` runs it
on the built model first and trains with the suggestion (restoring the weights it moved)."""
from __future__ import annotations

import copy
import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import TrainConfig, config_from_dict
from .data.augment import batch_mixer
from .engine.checkpoint import write_text
from .engine.optim import build_optimizer
from .errors import UserError

log = logging.getLogger(__name__)

START_LR, END_LR, STEPS = 1e-7, 10.0, 200


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed (exponential moving average, bias-corrected)
    suggestion: float
    folder: Path | None = None  # where lr_find.png was written


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's "valley": the longest stretch over which the loss keeps falling, and the lr half way
    down it (a third plus a sixth; points in the first tenth and the last five are ignored, as fastai does)."""
    start, stop = len(losses) // 10, max(len(losses) // 10 + 2, len(losses) - 5)
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


def range_test(model: torch.nn.Module, train_model: torch.nn.Module, loader, config: TrainConfig,
               num_classes: int, steps: int = STEPS, start_lr: float = START_LR, end_lr: float = END_LR) -> RangeTest:
    """Run the test on `train_model` (which shares `model`'s weights) and put the weights, buffers and
    BatchNorm statistics back as they were."""
    saved = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(model, config.optimizer, start_lr, config.momentum, config.weight_decay,
                                config.backbone_lr_mult, config.norm_weight_decay)
    ratios = [group["lr"] / start_lr for group in optimizer.param_groups]  # the backbone's multiplier kept
    mixer = batch_mixer(config.mixup, config.cutmix, num_classes)
    gamma = (end_lr / start_lr) ** (1 / max(1, steps - 1))
    lrs, losses, average, best = [], [], 0.0, math.inf
    train_model.train()
    step = 0
    try:
        while step < steps:
            begun = step
            for images, labels in loader:
                lr = start_lr * gamma ** step
                for group, ratio in zip(optimizer.param_groups, ratios):
                    group["lr"] = lr * ratio
                targets = labels
                if mixer is not None:
                    images, targets = mixer(images, labels)
                loss = F.cross_entropy(train_model(images), targets, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = loss.item()
                average = 0.98 * average + 0.02 * value
                smoothed = average / (1 - 0.98 ** (step + 1))
                lrs.append(lr)
                losses.append(smoothed)
                best = min(best, smoothed)
                step += 1
                if not math.isfinite(value) or smoothed > 4 * best or step >= steps:
                    break
            if step == begun:
                raise UserError(f"Received: a training split with fewer pictures than one batch "
                                f"({config.batch_size}); expected more pictures or a smaller --batch-size")
            if not math.isfinite(losses[-1]) or losses[-1] > 4 * best or step >= steps:
                break
    finally:
        model.load_state_dict(saved)
    finite = [(lr, v) for lr, v in zip(lrs, losses) if math.isfinite(v)]
    lrs, losses = [lr for lr, _ in finite], [v for _, v in finite]
    return RangeTest(lrs, losses, valley(lrs, losses))


def write_range_test(folder: Path, result: RangeTest) -> None:
    """lr_find.png (the curve, the suggestion marked) and lr_find.csv (lr, smoothed loss)."""
    from .report.plots import plot_lr_find, save_figure

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["lr", "smoothed_loss"])
    writer.writerows([f"{lr:.6g}", f"{v:.6f}"] for lr, v in zip(result.lrs, result.losses))
    write_text(folder / "lr_find.csv", buffer.getvalue())
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
    from .train import build_model

    config = config_from_dict(overrides, config)
    config.validate()
    if config.lr == "auto":
        config.lr = None
    device = resolve_device(config.device)
    generator = seed_everything(config.data.seed)
    samples, excluded = load_training_samples(config)
    folder = RunFolder.new(str(out) if out is not None else None, "lr-find")
    data = prepare_data(config, samples, excluded, folder, resuming=False, spec=get_spec(config.model))
    built = build_model(config, data, device, generator, Dist())
    result = range_test(built.model, built.train_model, built.train_loader, config, len(data.classes), steps)
    write_range_test(folder.path, result)
    log.info("lr-find: %d steps from %.0e; suggested lr %.2e (valley) → %s", len(result.lrs), START_LR,
             result.suggestion, folder.path / "lr_find.png")
    result.folder = folder.path
    return result
