"""`imgcls train`: config → data → split → decoded cache → model → engine → run folder."""
from __future__ import annotations

import csv
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
from .data.decode import probe_pictures
from .data.dataset import BatchLoader, DecodedImages, decode_samples, inference_batch_size
from .data.sources import Samples, load_samples
from .data.store import CacheSettings
from .data.splits import kfold_indices, split_indices
from .engine.checkpoint import RESUME, load_resume, load_weights, write_json
from .engine.device import resolve_device, seed_everything
from .engine.distributed import convert_sync_batchnorm, init_distributed, shutdown
from .engine.feature_cache import CachedTail, FeatureLoader, frozen_features, weights_digest
from .engine.metrics import classification_metrics
from .engine.optim import Schedule, build_optimizer
from .engine.trainer import Callback, Trainer, predict_proba
from .errors import UserError
from .models.backbones import apply_freezing, describe_freezing, load_pretrained, load_weights_file
from .models.registry import channel_stats, create_model, get_spec
from .report.html import write_report
from .report.plots import plot_confusion, plot_curves, plot_grid, save_figure
from .runs import (ProgressLog, RunWriter, new_run_dir, pick_examples, read_split, write_config,
                   write_history, write_predictions_csv, write_split)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run reports; the run folder holds the rest."""

    run_dir: Path
    best_epoch: int
    val_accuracy: float
    val_log_loss: float
    train_seconds: float


def _data_kwargs(config: TrainConfig, source: str) -> dict:
    d = config.data
    return dict(source=source, labels=d.labels, id_col=d.id_col, label_col=d.label_col, ext=d.ext,
                label_pattern=d.label_pattern)


def _split(config: TrainConfig, decoded: DecodedImages, run_dir: Path, resuming: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the decoded pictures: saved split on resume, else K-fold or a seeded split."""
    d = config.data
    if resuming and (run_dir / "split.csv").is_file():
        split_file = run_dir / "split.csv"
    else:
        split_file = Path(d.split_file) if d.split_file else None
    if split_file is not None:
        # The saved split wins over re-splitting, so pictures added since cannot leak into training.
        if not split_file.is_file():
            raise UserError(f"Received: split file {split_file}; expected a split.csv written by imgcls train")
        assigned = read_split(split_file)
        return tuple(np.asarray([i for i, p in enumerate(decoded.paths) if assigned.get(p) == side], dtype=np.int64)
                     for side in ("train", "val"))
    labels = decoded.labels.numpy()
    if d.folds > 1:
        return kfold_indices(labels, d.folds, d.fold, d.seed)
    return split_indices(labels, d.val_split, d.split, d.seed)


def _clean(config: TrainConfig, samples: Samples) -> tuple[Samples, dict[str, str]]:
    """--clean: scan (as `imgcls check`), then drop the unreadable, tiny and cross-label duplicates."""
    if not config.data.clean:
        return samples, {}
    from .data.quality import paths_to_drop, scan

    rows, _ = scan(samples, min_pixels=config.data.min_pixels)
    dropped = paths_to_drop(rows)
    kept = samples.without(dropped)
    log.info("--clean dropped %d pictures (%s); uniform borders are trimmed when decoding", len(dropped),
             ", ".join(sorted(set(dropped.values()))) or "none")
    return kept, dropped


def _exclude(config: TrainConfig, samples: Samples) -> tuple[Samples, list[str]]:
    """Leave out the pictures a suspects.csv names (its flagged rows, or its first `exclude_top` rows)."""
    if not config.data.exclude:
        return samples, []
    path = Path(config.data.exclude)
    if not path.is_file():
        raise UserError(f"Received: --exclude {path}; expected a CSV with a path column (e.g. suspects.csv)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "path" not in rows[0]:
        raise UserError(f"Received: --exclude {path} without a 'path' column; expected e.g. suspects.csv")
    top = config.data.exclude_top
    chosen = rows[:top] if top is not None else [r for r in rows if r.get("flagged", "1") in ("1", "True", "true")]
    drop = {r["path"] for r in chosen}
    kept = samples.without(drop)
    log.info("excluded %d pictures listed in %s", len(samples) - len(kept), path)
    return kept, sorted(drop & set(samples.paths))


def _require_two_classes(samples: Samples, source: str, step: str) -> None:
    """After a step that leaves pictures out: pictures of at least two classes must remain."""
    present = np.flatnonzero(np.bincount(samples.labels, minlength=len(samples.classes)))
    if len(present) < 2:
        raise UserError(f"Received: {source} where {step} leaves {len(samples)} pictures of "
                        f"{len(present)} class(es); expected pictures of at least two classes")


def _model_meta(config: TrainConfig, classes: list[str], channels: int, size: int) -> dict:
    spec = get_spec(config.model)
    return {"format": "imgcls-model/1", "imgcls_version": __version__, "architecture": config.model,
            "trim_borders": config.data.clean,
            "model_args": dict(config.model_args), "num_classes": len(classes), "classes": classes,
            "input_size": size, "channels": channels, "mean": channel_stats(spec.mean, channels),
            "std": channel_stats(spec.std, channels), "config": config_to_dict(config)}


def _grid(decoded: DecodedImages, classes: list[str], count: int = 32) -> tuple[np.ndarray, list[str]]:
    idx = pick_examples(decoded.labels.numpy(), count)
    return decoded.pictures(idx).numpy(), [classes[int(decoded.labels[i])] for i in idx]


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None,
          callbacks: list[Callback] | None = None, **overrides) -> RunResult:
    """Train a model and write a run folder. `resume=RUN_DIR` finishes an interrupted run.

    Overrides are TrainConfig or DataConfig field names, e.g. train(source="digits", epochs=3);
    `callbacks` see the engine's events after the run folder's own writer.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"Received: --resume {run_dir}; expected a run folder holding config.yaml and resume.pt")
        config = config_from_dict(load_yaml(run_dir / "config.yaml"))
        # Killed before the first epoch ended: no resume.pt yet, so start that run again from scratch.
        state = load_resume(run_dir) if (run_dir / RESUME).is_file() else None
    else:
        config = config_from_dict(overrides, config)
        state = None
    config.validate()
    spec = get_spec(config.model)
    ranks, device = init_distributed(resolve_device(config.device))
    generator = seed_everything(config.data.seed, offset=ranks.rank)
    if ranks.active and config.batch_size < ranks.world:
        raise UserError(f"Received: batch-size {config.batch_size} over {ranks.world} processes; expected a "
                        "global batch of at least one picture per process")
    if not ranks.main:
        logging.getLogger("imgcls").setLevel(logging.WARNING)  # one voice in the log: rank 0's

    samples, excluded = _exclude(config, load_samples(**_data_kwargs(config, config.data.source)))
    if len(samples.classes) < 2:
        raise UserError(f"Received: {config.data.source} with a single class ({samples.classes[0]!r}); "
                        "expected pictures of at least two classes")
    _require_two_classes(samples, config.data.source, "--exclude")
    if resume is None:
        # Only rank 0 writes; the others never touch the run folder (they need no path unless resuming).
        run_dir = new_run_dir(config.out, config.model) if ranks.main else Path(config.out or ".")
        config.out = str(run_dir)
        if ranks.main:
            write_config(run_dir, config_to_dict(config))
    samples, dropped = _clean(config, samples)
    _require_two_classes(samples, config.data.source, "--clean")
    channels, size = _picture_shape(config, spec, samples)
    log.info("%d classes, %d pictures; decoding each once at %d px, %d channel(s)", len(samples.classes),
             len(samples), size, channels)
    trim = config.data.clean
    cache = CacheSettings(config.cache, config.cache_dir, config.cache_max_gb)
    decoded, skipped = decode_samples(samples, channels, size, trim=trim, cache=cache)
    skipped = samples.skipped + skipped
    if config.data.val:
        # A separate validation folder uses the same layout flags; its classes must be the training ones.
        val_samples = load_samples(**_data_kwargs(config, config.data.val), classes=samples.classes)
        train_data, (val_data, val_skipped) = decoded, decode_samples(val_samples, channels, size, trim=trim, cache=cache)
        skipped += val_samples.skipped + val_skipped
    else:
        train_idx, val_idx = _split(config, decoded, run_dir, resume is not None)
        train_data, val_data = decoded.subset(train_idx), decoded.subset(val_idx)
    if len(train_data) == 0 or len(val_data) == 0:
        raise UserError(f"Received: {config.data.source} where no {'training' if not len(train_data) else 'validation'} "
                        "picture could be decoded; expected readable pictures (see the skipped list above)")

    classes = samples.classes
    if ranks.main:
        _write_data_files(run_dir, config, classes, size, channels, train_data, val_data, skipped, excluded, dropped)
    augment = BatchAugment(config.augment, size, channels) if config.augment != "none" else None
    if ranks.main:
        # samples.png shows what the model sees: the pictures after augmentation.
        shown, titles = _grid(train_data, classes)
        if augment is not None:
            shown = augment(torch.from_numpy(shown)).numpy()
        save_figure(plot_grid(shown, titles), run_dir / "samples.png")

    meta = _model_meta(config, classes, channels, size)
    model = _build_model(config, len(classes), channels, size).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ranks.active and config.sync_bn:
        log.info("--sync-bn: %d BatchNorm layers use the global batch's statistics", convert_sync_batchnorm(model))
    train_model = torch.compile(model) if config.compile else model
    if ranks.active:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(train_model, device_ids=[device] if device.type == "cuda" else None)
    train_loader = BatchLoader(train_data, config.batch_size, meta["mean"], meta["std"], shuffle=True,
                               device=device, generator=generator, drop_last=True, augment=augment,
                               shard=(ranks.rank, ranks.world), channels_last=config.channels_last)
    val_loader = BatchLoader(val_data, inference_batch_size(channels, size), meta["mean"], meta["std"],
                             shuffle=False, device=device, channels_last=config.channels_last)
    eval_model = model
    cached = _feature_cache(config, model, train_data, val_data, meta, device, generator, ranks.active)
    if cached is not None:
        train_loader, val_loader, eval_model = cached
        train_model = eval_model
    steps = min(len(train_loader), config.train_batches or len(train_loader))
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.momentum, config.weight_decay,
                                config.backbone_lr_mult)
    schedule = Schedule(optimizer, config.scheduler, config.epochs, steps)
    writers = [RunWriter(run_dir, meta), ProgressLog(steps), *(callbacks or [])] if ranks.main else []
    trainer = Trainer(model, optimizer, schedule, early_stop=config.early_stop, max_batches=config.train_batches,
                      generator=generator, label_smoothing=config.label_smoothing,
                      batch_transform=batch_mixer(config.mixup, config.cutmix, len(classes)),
                      callbacks=writers, train_model=train_model, eval_model=eval_model,
                      autocast=_autocast_dtype(config.precision, device))
    if state is not None:
        trainer.load_state_dict(state)
        if ranks.main:
            write_history(run_dir, trainer.state.history)  # drop rows of an epoch that did not finish
        log.info("resuming %s after epoch %d of %d", run_dir, trainer.state.epoch, config.epochs)

    start = time.perf_counter()
    trainer.fit(train_loader, val_loader, config.epochs)
    seconds = sum(row["seconds"] for row in trainer.state.history)
    log.info("trained %d epochs in %.1f s (this process: %.1f s)", trainer.state.epoch, seconds,
             time.perf_counter() - start)
    if not ranks.main:
        shutdown()
        return RunResult(run_dir, trainer.state.best_epoch, float("nan"), float("nan"), seconds)
    result = _finish(run_dir, model, trainer, val_data, val_loader, classes, seconds,
                     eval_model, (train_data, train_loader) if cached is not None else None)
    shutdown()
    return result


def _picture_shape(config: TrainConfig, spec, samples: Samples) -> tuple[int, int]:
    """(channels, side) to decode at: the flags', else the model's; a model that fits any picture
    (airnet) takes the pictures' own channel count and side, kept within 16-64 px."""
    d = config.data
    if spec.fits_pictures and (d.channels is None or d.img_size is None):
        channels, side = probe_pictures(samples.paths)
        return d.channels or channels, d.img_size or min(64, max(16, side))
    return d.channels or spec.channels, d.img_size or spec.size_for(config.model_args)


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


def _feature_cache(config: TrainConfig, model: torch.nn.Module, train_data: DecodedImages, val_data: DecodedImages,
                   meta: dict, device: torch.device, generator: torch.Generator, distributed: bool):
    """(train loader, val loader, model tail) over cached frozen-block outputs, or None when not applicable."""
    split = model.split_frozen(config.cache_before_last) if hasattr(model, "split_frozen") else None
    if split is None or not config.feature_cache:
        return None
    if config.augment != "none" or config.mixup or config.cutmix or distributed:
        log.info("frozen-feature cache off: augmentation, mixing or several processes change the frozen "
                 "blocks' input every epoch")
        return None
    prefix, rest, modules = split
    # Keyed by what the frozen blocks compute, so later runs in this process with the same frozen
    # weights (audit folds, finetune's stage 2) reuse it.
    key = (config.model, json.dumps(config.model_args, sort_keys=True), weights_digest(modules),
           meta["channels"], meta["input_size"], config.data.clean)
    parts = {name: frozen_features(key, model, prefix, data, mean=meta["mean"], std=meta["std"], device=device)
             for name, data in (("train", train_data), ("val", val_data))}
    train_loader = FeatureLoader(parts["train"], train_data.labels.to(device), config.batch_size, shuffle=True,
                                 generator=generator, drop_last=True)
    val_loader = FeatureLoader(parts["val"], val_data.labels.to(device), max(config.batch_size, 256), shuffle=False)
    return train_loader, val_loader, CachedTail(model, rest).to(device)


def _write_data_files(run_dir: Path, config: TrainConfig, classes: list[str], size: int, channels: int,
                      train_data: DecodedImages, val_data: DecodedImages, skipped: list, excluded: list,
                      dropped: dict) -> None:
    """data.json (counts, skipped, excluded, cleaned) and split.csv."""
    trim = config.data.clean
    write_json(run_dir / "data.json", {
        "source": config.data.source, "classes": classes, "img_size": size, "channels": channels,
        "counts": {"train": _counts(train_data, classes), "val": _counts(val_data, classes)},
        "skipped_count": len(skipped), "skipped": skipped, "excluded_count": len(excluded), "excluded": excluded,
        "cleaned": {"trim_borders": trim, "dropped_count": len(dropped),
                    "dropped": [{"path": p, "reason": r} for p, r in dropped.items()]}})
    write_split(run_dir, [(p, classes[int(l)], "train") for p, l in zip(train_data.paths, train_data.labels)]
                + [(p, classes[int(l)], "val") for p, l in zip(val_data.paths, val_data.labels)])


def _counts(decoded: DecodedImages, classes: list[str]) -> dict[str, int]:
    per_class = np.bincount(decoded.labels.numpy(), minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, per_class)}


def _finish(run_dir: Path, model: torch.nn.Module, trainer: Trainer, val_data: DecodedImages, val_loader,
            classes: list[str], seconds: float, eval_model: torch.nn.Module, cached_train: tuple | None) -> RunResult:
    """Reload the best epoch's weights, score it on validation, and write metrics, plots and report."""
    load_weights(run_dir, model)
    probs, _, _ = predict_proba(eval_model, val_loader)
    if cached_train is not None:
        # From cached features this costs seconds: every training picture's probability under the
        # best model (what finetune's --drop-implausible ranks by).
        train_data, train_loader = cached_train
        ordered = FeatureLoader(train_loader.parts, train_loader.labels, 512, shuffle=False)
        train_probs, _, _ = predict_proba(eval_model, ordered)
        write_predictions_csv(run_dir / "train_predictions.csv", train_data.paths, train_data.labels.numpy(),
                              train_probs, classes)
    labels = val_data.labels.numpy()
    state = trainer.state
    metrics = {"best_epoch": state.best_epoch, "epochs_run": state.epoch, "stopped_early": state.stopped_early,
               "train_seconds": round(seconds, 3), "validation": classification_metrics(labels, probs, classes)}
    write_json(run_dir / "metrics.json", metrics)
    write_predictions_csv(run_dir / "val_predictions.csv", val_data.paths, labels, probs, classes)
    save_figure(plot_curves(state.history, state.best_epoch), run_dir / "curves.png")
    save_figure(plot_confusion(np.asarray(metrics["validation"]["confusion"]), classes), run_dir / "confusion.png")
    idx = pick_examples(labels, 32, seed=1)
    predicted = probs.argmax(1)
    titles = [f"{classes[predicted[i]]}/{classes[labels[i]]}" for i in idx]
    colors = ["black" if predicted[i] == labels[i] else "red" for i in idx]
    save_figure(plot_grid(val_data.pictures(idx).numpy(), titles, colors), run_dir / "val_predictions.png")
    write_report(run_dir)
    val = metrics["validation"]
    log.info("best epoch %d: val accuracy %.4f, log loss %.4f → %s", state.best_epoch, val["accuracy"],
             val["log_loss"], run_dir)
    return RunResult(run_dir, state.best_epoch, val["accuracy"], val["log_loss"], seconds)
