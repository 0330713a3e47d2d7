"""`imgcls train` in four named stages: prepare the data (data/prepare.py), build the model and its
loaders, fit (the one engine), write the run (runs.RunFolder owns every file)."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import TrainConfig, config_from_dict, config_to_dict, load_yaml
from .data.augment import BatchAugment, batch_mixer
from .data.dataset import DecodedImages
from .data.decode import inference_batch_size
from .data.loader import BatchLoader
from .data.prepare import PreparedData, load_training_samples, prepare_data
from .data.store import CacheSettings
from .artifact.card import ModelCard, Preprocess, read_card, write_card
from .artifact.files import RESUME, TRAIN_PREDICTIONS, VAL_PREDICTIONS
from .tasks import get_task
from .engine.checkpoint import load_resume, load_weights
from .engine.device import resolve_device, seed_everything
from .engine.distributed import convert_sync_batchnorm, init_distributed, shutdown
from .engine.feature_cache import CachedTail, FeatureLoader, frozen_features, weights_digest
from .engine.metrics import classification_metrics
from .engine.optim import Schedule, build_optimizer
from .engine.trainer import Callback, Trainer, predict_proba
from .errors import UserError
from .models.backbones import apply_freezing, describe_freezing, load_pretrained, load_weights_file
from .models.registry import channel_stats, create_model, get_spec
from .runs import ProgressLog, RunFolder, RunWriter, pick_examples
from .tracking import check_trackers, make_trackers

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run reports; the run folder holds the rest."""

    run_dir: Path
    best_epoch: int
    val_accuracy: float
    val_log_loss: float
    train_seconds: float
    score_name: str = "accuracy"  # what val_accuracy holds: the task's headline figure (micro_f1 for several labels)


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


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None,
          callbacks: list[Callback] | None = None, report: bool = True, **overrides) -> RunResult:
    """Train a model and write a run folder. `resume=RUN_DIR` finishes an interrupted run.

    Overrides are TrainConfig or DataConfig field names, e.g. train(source="digits", epochs=3);
    `callbacks` see the engine's events after the run folder's own writer. report=False (tune
    trials, audit folds) writes the weights, history, metrics and predictions but no plots or
    report.html.
    """
    config, state = _resolve(config, resume, overrides)
    check_trackers(config.track)  # a missing package ends here, before any picture is read
    spec = get_spec(config.model)
    ranks, device = init_distributed(resolve_device(config.device))
    generator = seed_everything(config.data.seed, offset=ranks.rank)
    if ranks.active and config.batch_size < ranks.world:
        raise UserError(f"Received: batch-size {config.batch_size} over {ranks.world} processes; expected a "
                        "global batch of at least one picture per process")
    if ranks.active and config.lr == "auto":
        # Each process would see its own slice's loss and could stop the range test at its own batch.
        raise UserError("Received: --lr auto over several processes; expected a number: run `imgcls lr-find` "
                        "with the same flags in one process first")
    if not ranks.main:
        logging.getLogger("imgcls").setLevel(logging.WARNING)  # one voice in the log: rank 0's

    samples, excluded = load_training_samples(config)
    if resume is not None:
        folder = RunFolder(Path(resume), writes=ranks.main)
    else:
        folder = RunFolder.new(config.out, config.model, writes=ranks.main)  # only rank 0 writes
        config.out = str(folder.path)
        folder.write_config(config_to_dict(config))
    data = prepare_data(config, samples, excluded, folder, resuming=resume is not None, spec=spec)
    data.write(folder, config)
    if report:
        _write_samples(folder, config, data)
    built = build_model(config, data, device, generator, ranks)
    if config.lr == "auto":
        _choose_lr(config, built, folder, device)

    trackers = make_trackers(config.track, folder.path, config_to_dict(config)) if ranks.main else []
    trainer = _fit(config, built, folder, generator, device, state,
                   [*(callbacks or []), *trackers] if ranks.main else None)
    seconds = sum(row["seconds"] for row in trainer.state.history)
    if not ranks.main:
        shutdown()
        return RunResult(folder.path, trainer.state.best_epoch, float("nan"), float("nan"), seconds)
    result = _write_run(folder, built, trainer, data, seconds, report, config)
    for tracker in trackers:
        tracker.finish(json.loads((folder / "metrics.json").read_text(encoding="utf-8")))
    shutdown()
    return result


def _resolve(config: TrainConfig | None, resume: str | Path | None, overrides: dict) -> tuple[TrainConfig, dict | None]:
    """The run's config (from the run folder when resuming) and the resume state, if any."""
    if resume is None:
        config = config_from_dict(overrides, config)
        config.validate()
        return config, None
    run_dir = Path(resume)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"Received: --resume {run_dir}; expected a run folder holding config.yaml and resume.pt")
    config = config_from_dict(load_yaml(run_dir / "config.yaml"))
    config.validate()
    # Killed before the first epoch ended: no resume.pt yet, so start that run again from scratch.
    return config, load_resume(run_dir) if (run_dir / RESUME).is_file() else None


def model_card(config: TrainConfig, data: PreparedData) -> ModelCard:
    """The run's model card: the architecture, its classes and task, and the one preprocessing that
    training's loaders and every later command use."""
    spec = get_spec(config.model)
    preprocess = Preprocess(data.channels, data.size, tuple(channel_stats(spec.mean, data.channels)),
                            tuple(channel_stats(spec.std, data.channels)), config.resize_mode(), config.data.clean)
    return ModelCard(architecture=config.model, classes=list(data.classes), preprocess=preprocess,
                     model_args=dict(config.model_args), task=config.task(), given_classes=data.given_classes or None,
                     imgcls_version=__version__, config=config_to_dict(config))


def _write_samples(folder: RunFolder, config: TrainConfig, data: PreparedData) -> None:
    """samples.png shows what the model sees: training pictures after augmentation."""
    from .report.plots import plot_grid

    idx = pick_examples(data.train.labels.numpy(), 32)
    shown = data.train.pictures(idx)
    if config.augment != "none":
        with torch.random.fork_rng():  # the run's random draws do not depend on whether it draws this
            shown = BatchAugment(config.augment, data.size, data.channels)(shown)
    task = get_task(config.task())
    titles = [task.label_text(data.train.labels[i].numpy(), data.classes, config.data.label_sep) for i in idx]
    folder.save_figure(plot_grid(shown.numpy(), titles), "samples.png")


def build_model(config: TrainConfig, data: PreparedData, device: torch.device, generator: torch.Generator,
           ranks) -> Built:
    """The model (weights, freezing, layout, DDP) and its loaders, over cached features where possible."""
    card = model_card(config, data)
    p = card.preprocess
    model = _build_model(config, len(data.classes), data.channels, data.size).to(device)
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


def _choose_lr(config: TrainConfig, built: Built, folder: RunFolder, device: torch.device) -> None:
    """--lr auto: the range test on the built model (its weights put back), then its suggestion is the
    run's lr, written into config.yaml so that --resume and later readers see the number."""
    from .lr_find import range_test, write_range_test

    result = range_test(config, built, device)
    config.lr = float(f"{result.suggestion:.3g}")
    log.info("--lr auto: the range test suggests %.3g (valley); lr_find.png in the run folder", config.lr)
    folder.write_config(config_to_dict(config), comment=f"lr {config.lr:.3g} was chosen by the learning-rate "
                        f"finder (--lr auto, fastai's valley over {len(result.lrs)} batches; lr_find.png)")
    if folder.writes:
        write_range_test(folder.path, result)


def make_trainer(config: TrainConfig, built: Built, optimizer: torch.optim.Optimizer, schedule, device: torch.device,
                 *, callbacks: list[Callback] = (), generator: torch.Generator | None = None,
                 ema: bool = True) -> Trainer:
    """The engine as every command that trains builds it (train, the lr range test): loss weights,
    label smoothing, MixUp/CutMix, precision and, unless ema=False, the weights' moving average."""
    return Trainer(built.model, optimizer, schedule, early_stop=config.early_stop, max_batches=config.train_batches,
                   generator=generator, label_smoothing=config.label_smoothing,
                   class_weight=_class_weight(config, built), ema_decay=config.ema if ema else 0.0,
                   batch_transform=batch_mixer(config.mixup, config.cutmix, built.card.num_classes),
                   callbacks=callbacks, train_model=built.train_model, eval_model=built.eval_model,
                   task=get_task(built.card.task),
                   autocast=_autocast_dtype(config.precision, device))


def _fit(config: TrainConfig, built: Built, folder: RunFolder, generator: torch.Generator, device: torch.device,
         state: dict | None, callbacks: list[Callback] | None) -> Trainer:
    """The one engine: optimiser, schedule, the run folder's writer, resume state, then every epoch."""
    steps = min(len(built.train_loader), config.train_batches or len(built.train_loader))
    optimizer = build_optimizer(built.model, config.optimizer, config.lr, config.momentum, config.weight_decay,
                                config.backbone_lr_mult, config.norm_weight_decay)
    schedule = Schedule(optimizer, config.scheduler, config.epochs, steps)
    writers = [RunWriter(folder, built.card), ProgressLog(steps), *callbacks] if callbacks is not None else []
    trainer = make_trainer(config, built, optimizer, schedule, device, callbacks=writers, generator=generator)
    if state is not None:
        trainer.load_state_dict(state)
        folder.write_history(trainer.state.history)  # drop rows of an epoch that did not finish
        log.info("resuming %s after epoch %d of %d", folder.path, trainer.state.epoch, config.epochs)
    start = time.perf_counter()
    trainer.fit(built.train_loader, built.val_loader, config.epochs)
    log.info("trained %d epochs in %.1f s (this process: %.1f s)", trainer.state.epoch,
             sum(row["seconds"] for row in trainer.state.history), time.perf_counter() - start)
    return trainer


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
           "trim": p.trim, **({"resize": p.resize} if p.resize != "squash" else {})}
    cache = CacheSettings(config.cache, config.cache_dir, config.cache_max_gb)
    features = {name: frozen_features(key, model, prefix, part, mean=p.mean, std=p.std, device=device,
                                      cache=cache) for name, part in (("train", data.train), ("val", data.val))}
    train_loader = FeatureLoader(features["train"], config.batch_size, shuffle=True, device=device,
                                 generator=generator, drop_last=True, balanced=config.sampler == "balanced")
    val_loader = FeatureLoader(features["val"], max(config.batch_size, 256), shuffle=False, device=device)
    return train_loader, val_loader, CachedTail(model, rest).to(device)


def _write_run(folder: RunFolder, built: Built, trainer: Trainer, data: PreparedData, seconds: float,
               report: bool, config: TrainConfig) -> RunResult:
    """Reload the best epoch's weights, score it on validation, and write metrics, predictions, and
    (with `report`) the plots and report.html."""
    load_weights(folder.path, built.model)
    classes, task, sep = data.classes, get_task(built.card.task), config.data.label_sep
    probs = trainer.best_val_probs  # the best epoch's own validation pass: not predicted a second time
    if probs is None or len(probs) != len(data.val):  # resumed after the best epoch
        probs, _, _ = predict_proba(built.eval_model, built.val_loader, task=task)
    labels = data.val.labels.numpy()
    card = read_card(folder.path) if folder.writes else built.card
    if card.task == "multi-label":  # each class's threshold, chosen on validation (or --threshold for all)
        card = card.with_(thresholds=[config.threshold] * len(classes) if config.threshold is not None
                          else task.choose_thresholds(labels, probs))
        if folder.writes:
            write_card(folder.path, card)
    if built.cached_train is not None:
        # From cached features this costs seconds: every training picture's probability under the
        # best model (what finetune's --drop-implausible ranks by).
        ordered = FeatureLoader(built.cached_train.features, 512, shuffle=False, device=built.cached_train.device)
        train_probs, _, _ = predict_proba(built.eval_model, ordered, task=task)
        folder.write_predictions(TRAIN_PREDICTIONS, data.train.paths, data.train.labels.numpy(), train_probs, card, sep)
    state = trainer.state
    metrics = {"best_epoch": state.best_epoch, "epochs_run": state.epoch, "stopped_early": state.stopped_early,
               "train_seconds": round(seconds, 3), "task": card.task,
               "validation": task.metrics(labels, probs, classes, card)}
    if config.calibrate:
        metrics["calibration"] = _calibrate(folder, labels, probs, classes)
    folder.write_metrics(metrics)
    folder.write_predictions(VAL_PREDICTIONS, data.val.paths, labels, probs, card, sep)
    if report:
        _write_plots(folder, built, state, metrics, data.val, labels, probs, card)
        folder.write_report()
    val = metrics["validation"]
    name, value = task.headline(val)
    log.info("best epoch %d: val %s %.4f, log loss %.4f → %s", state.best_epoch, name.replace("_", "-"), value,
             val["log_loss"], folder.path)
    return RunResult(folder.path, state.best_epoch, value, val["log_loss"], seconds, name)


def _calibrate(folder: RunFolder, labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """--calibrate: the temperature that minimises the validation log loss, kept in model.json (so
    every later command uses it); the validation figures before and after. Fitted and scored on the
    same pictures: an independent split says more (bench/)."""
    from .engine.calibration import fit_temperature, scaled

    temperature = fit_temperature(probs, labels)
    after = classification_metrics(labels, scaled(probs, temperature), classes)
    before = classification_metrics(labels, probs, classes)
    if folder.writes:
        write_card(folder.path, read_card(folder.path).with_(temperature=round(temperature, 6)))
    log.info("--calibrate: temperature %.3f; validation log loss %.4f → %.4f, ECE %.4f → %.4f", temperature,
             before["log_loss"], after["log_loss"], before["ece"], after["ece"])
    return {"temperature": round(temperature, 6), "fitted_on": "validation",
            "before": {k: before[k] for k in ("log_loss", "ece")}, "after": {k: after[k] for k in ("log_loss", "ece")}}


def _write_plots(folder: RunFolder, built: Built, state, metrics: dict, val: DecodedImages, labels: np.ndarray,
                 probs: np.ndarray, card: ModelCard) -> None:
    """curves.png, then confusion.png and the interpretation pictures (report/interpretation.py), or for
    several labels per picture each class's precision-recall curve with its threshold (pr_curves.png)."""
    from .report.interpretation import write_interpretation
    from .report.plots import plot_confusion, plot_curves, plot_pr_curves

    folder.save_figure(plot_curves(state.history, state.best_epoch), "curves.png")
    if card.task == "multi-label":
        folder.save_figure(plot_pr_curves(labels, probs, card.classes, card.thresholds), "pr_curves.png")
        return
    folder.save_figure(plot_confusion(np.asarray(metrics["validation"]["confusion"]), card.classes), "confusion.png")
    write_interpretation(folder, built.model, built.card, metrics, val, labels, probs, card.classes)
