"""Config + prepared data + task → the model, its loaders and the training engine: what every command that
trains shares (train, lr-find, and through train: tune, audit, folds, finetune)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import torch

from . import __version__
from .artifact.card import ModelCard, Preprocess
from .config import TrainConfig, config_to_dict
from .data.augment import BatchAugment, batch_mixer
from .data.decode import inference_batch_size
from .data.loader import BatchLoader
from .data.prepare import PreparedData
from .engine.distributed import convert_sync_batchnorm
from .engine.feature_cache import CachedTail, FeatureLoader, frozen_features, weights_digest
from .engine.trainer import Callback, Trainer
from .models.backbones import apply_freezing, describe_freezing, load_pretrained, load_weights_file
from .models.registry import channel_stats, create_model, get_spec
from .tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class Built:
    """The model and what feeds it: loaders over pictures, or over cached frozen-block outputs."""

    model: torch.nn.Module  # the whole model (its weights are the run's)
    train_model: torch.nn.Module  # what the training step calls (DDP, compiled, or the tail over features)
    eval_model: torch.nn.Module
    train_loader: object
    val_loader: object
    cached_train: FeatureLoader | None  # the training features, when the frozen-feature cache is used
    card: ModelCard


def model_card(config: TrainConfig, data: PreparedData) -> ModelCard:
    """The run's model card: the architecture, its classes and task, and the one preprocessing that
    training's loaders and every later command use."""
    spec = get_spec(config.model)
    preprocess = Preprocess(data.channels, data.size, tuple(channel_stats(spec.mean, data.channels)),
                            tuple(channel_stats(spec.std, data.channels)), config.resize_mode(), config.data.clean,
                            config.crop_fraction())
    return ModelCard(architecture=config.model, classes=list(data.classes), preprocess=preprocess,
                     model_args=dict(config.model_args), task=config.task(), given_classes=data.given_classes or None,
                     pretrained_cfg=spec.pretrained_cfg, imgcls_version=__version__, config=config_to_dict(config))


def build_model(config: TrainConfig, data: PreparedData, device: torch.device, generator: torch.Generator,
           ranks) -> Built:
    """The model (weights, freezing, layout, DDP) and its loaders, over cached features where possible."""
    card = model_card(config, data)
    p = card.preprocess
    model = _build_model(config, len(data.classes), data.channels, data.size).to(device)
    if hasattr(model, "fit_whitening") and not (config.weights or config.pretrained):
        _fit_whitening(model, data, p, device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    cached = _feature_cache(config, model, data, card, device, generator, ranks.active)
    if cached is not None:
        train_loader, val_loader, tail = cached
        return Built(model, tail, tail, train_loader, val_loader, train_loader, card)
    if ranks.active and config.sync_bn:
        log.info("--sync-bn: %d BatchNorm layers use the global batch's statistics", convert_sync_batchnorm(model))
    train_model = torch.compile(model) if config.compile else model
    if ranks.active:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(train_model, device_ids=[device] if device.type == "cuda" else None)
    augment = BatchAugment(config.augment, data.size, data.channels) if config.augment != "none" else None
    train_loader = BatchLoader(data.train, config.batch_size, p.mean, p.std, shuffle=True,
                               device=device, generator=generator, drop_last=True, augment=augment,
                               shard=(ranks.rank, ranks.world), channels_last=config.channels_last,
                               order=config.order, balanced=config.sampler == "balanced")
    val_loader = BatchLoader(data.val, inference_batch_size(data.channels, data.size), p.mean, p.std,
                             shuffle=False, device=device, channels_last=config.channels_last)
    return Built(model, train_model, model, train_loader, val_loader, None, card)


def _class_weight(config: TrainConfig, built: Built) -> torch.Tensor | None:
    """--class-weight balanced: the task's loss weights (per class N / (K * its pictures), scikit-learn's
    "balanced"; for several labels, BCE's pos_weight: negatives / positives)."""
    if config.class_weight == "none":
        return None
    weight = get_task(built.card.task).loss_weight(built.train_loader.labels.cpu(), built.card.num_classes)
    log.info("--class-weight balanced: %s", ", ".join(f"{c} {w:.2f}" for c, w in zip(built.card.classes, weight)))
    return weight.float().to(built.train_loader.labels.device)


def make_trainer(config: TrainConfig, built: Built, optimizer: torch.optim.Optimizer, schedule, device: torch.device,
                 *, callbacks: list[Callback] = (), generator: torch.Generator | None = None,
                 ema: bool = True) -> Trainer:
    """The engine as every command that trains builds it (train, the lr range test): loss weights,
    label smoothing, MixUp/CutMix, precision and, unless ema=False, the weights' moving average."""
    return Trainer(built.model, optimizer, schedule, early_stop=config.early_stop, max_batches=config.train_batches,
                   generator=generator, label_smoothing=config.label_smoothing,
                   class_weight=_class_weight(config, built), ema_decay=config.ema if ema else 0.0,
                   batch_transform=batch_mixer(config.mixup, config.cutmix, built.card.num_classes,
                                                 built.card.task == "multi-label"),
                   callbacks=callbacks, train_model=built.train_model, eval_model=built.eval_model,
                   task=get_task(built.card.task), keep=config.keep, val_every=config.val_every,
                   autocast=_autocast_dtype(config.precision, device))


def _fit_whitening(model: torch.nn.Module, data: PreparedData, p, device: torch.device) -> None:
    """A model with a data-fitted first layer (airnet whiten=1) sets it from up to 5,000 training pictures,
    evenly spaced so that every torchrun rank picks the same ones (resuming, the saved weights replace it)."""
    from .models.airnet import WHITEN_PICTURES

    count = min(len(data.train), WHITEN_PICTURES)
    idx = np.linspace(0, len(data.train) - 1, count).astype(np.int64)
    model.fit_whitening(p.normalise_torch(data.train.pictures(idx), device))


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware has bf16 units (CUDA); this CPU kind runs bf16 ~40x slower (FACTS)."""
    if precision == "bf16" or precision == "auto" and device.type == "cuda":
        return torch.bfloat16
    return None


def _build_model(config: TrainConfig, num_classes: int, channels: int, size: int) -> torch.nn.Module:
    """The architecture, its starting weights (--pretrained or --weights), then the freezing flags."""
    model = create_model(config.model, num_classes, channels, size, **config.model_args)
    if config.pretrained:
        load_pretrained(model, config.model)
    elif config.weights:
        load_weights_file(model, config.weights)
    if config.freeze != "none" or config.unfreeze or config.unfreeze_last is not None:
        training = apply_freezing(model, config.freeze, config.unfreeze, config.unfreeze_last)
        log.info("%s; training: head%s", describe_freezing(model), "".join(f", {n}" for n in training))
    if config.freeze_bn_scale:
        scales = [m.weight for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                  and m.weight is not None and m.weight.requires_grad]
        for weight in scales:
            weight.requires_grad_(False)
        log.info("--freeze-bn-scale: %d BatchNorm scales fixed, their biases train", len(scales))
    return model


def _feature_cache(config: TrainConfig, model: torch.nn.Module, data: PreparedData, card: ModelCard,
                   device: torch.device, generator: torch.Generator, distributed: bool):
    """(train loader, val loader, model tail) over cached frozen-block outputs, or None when not applicable."""
    split = model.split_frozen(config.cache_before_last) if hasattr(model, "split_frozen") else None
    if split is None or not config.feature_cache:
        return None
    if config.ema:
        log.info("frozen-feature cache off: --ema averages the whole model, which the cached tail does not see")
        return None
    if config.augment != "none" or config.mixup or config.cutmix or distributed:
        log.info("frozen-feature cache off: augmentation, mixing or several processes change the frozen "
                 "blocks' input every epoch")
        return None
    prefix, rest, modules = split
    p = card.preprocess
    # Keyed by what the frozen blocks compute, so later runs with the same frozen weights (audit folds,
    # finetune's stage 2, a second finetune) reuse it.
    key = {"model": config.model, "model_args": json.loads(json.dumps(config.model_args, sort_keys=True)),
           "weights": weights_digest(modules), "channels": p.channels, "size": p.size,
           "trim": p.trim, **({"resize": p.resize} if p.resize != "squash" else {}),
           **({"crop": p.crop} if p.crop != 1.0 else {})}
    cache = config.cache_settings()
    features = {name: frozen_features(key, model, prefix, part, mean=p.mean, std=p.std, device=device,
                                      cache=cache) for name, part in (("train", data.train), ("val", data.val))}
    train_loader = FeatureLoader(features["train"], config.batch_size, shuffle=True, device=device,
                                 generator=generator, drop_last=True, balanced=config.sampler == "balanced")
    val_loader = FeatureLoader(features["val"], max(config.batch_size, 256), shuffle=False, device=device)
    return train_loader, val_loader, CachedTail(model, rest).to(device)
