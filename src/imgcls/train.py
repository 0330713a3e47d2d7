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

from .artifact.card import ModelCard, read_card, write_card
from .artifact.files import OOD, RESUME, TRAIN_PREDICTIONS, VAL_PREDICTIONS
from .build import Built, build_model, make_trainer
from .config import TrainConfig, config_from_dict, config_to_dict, load_yaml
from .data.augment import BatchAugment
from .data.dataset import DecodedImages
from .data.prepare import PreparedData, load_training_samples, prepare_data
from .data.sources import outlier_paths
from .data.split_folders import for_training
from .engine.checkpoint import load_resume, load_weights, save_tensors
from .engine.device import resolve_device, seed_everything
from .engine.distributed import init_distributed, shutdown
from .engine.feature_cache import FeatureLoader
from .engine.optim import Schedule, build_optimizer
from .engine.trainer import Callback, Trainer, predict_proba
from .errors import UserError
from .models.registry import get_spec
from .tasks import get_task
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

    samples, excluded = load_training_samples(config.data, config.class_names)
    if config.outliers:
        outlier_paths(config.outliers)  # a folder with no picture ends here, before any training
    if resume is not None:
        folder = RunFolder(Path(resume), writes=ranks.main)
    else:
        folder = RunFolder.new(config.out, config.model, writes=ranks.main)  # only rank 0 writes
        config.out = str(folder.path)
        folder.write_config(config_to_dict(config))
    data = prepare_data(config.data, samples, excluded, folder, resuming=resume is not None, spec=spec,
                        model_args=config.model_args, resize=config.resize_mode(), cache=config.cache_settings(),
                        crop=config.crop_fraction())
    data.write(folder, config.data)
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
        config.data = for_training(config.data)  # a root of train/, val/, test/ folders: read as those splits
        config.validate()
        return config, None
    run_dir = Path(resume)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"Received: --resume {run_dir}; expected a run folder holding config.yaml and resume.pt")
    config = config_from_dict(load_yaml(run_dir / "config.yaml"))
    config.validate()
    # Killed before the first epoch ended: no resume.pt yet, so start that run again from scratch.
    return config, load_resume(run_dir) if (run_dir / RESUME).is_file() else None


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


def _fit(config: TrainConfig, built: Built, folder: RunFolder, generator: torch.Generator, device: torch.device,
         state: dict | None, callbacks: list[Callback] | None) -> Trainer:
    """The one engine: optimiser, schedule, the run folder's writer, resume state, then every epoch."""
    steps = min(len(built.train_loader), config.train_batches or len(built.train_loader))
    optimizer = build_optimizer(built.model, config.optimizer, config.lr, config.momentum, config.weight_decay,
                                config.backbone_lr_mult, config.norm_weight_decay, config.nesterov, config.lookahead,
                                config.bias_lr_mult)
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
    saved = card
    if config.calibrate:
        # The files below hold the raw probabilities, so they keep the uncalibrated card's decisions.
        saved, metrics["calibration"] = _calibrate(folder, card, labels, probs, config.calibrate_min_errors)
    open_set = _fit_open_set(config, built, data, saved, probs, folder)
    if open_set is not None:
        metrics["open_set"] = open_set.metrics
    folder.write_metrics(metrics)
    folder.write_predictions(VAL_PREDICTIONS, data.val.paths, labels, probs, card, sep)
    if report:
        _write_plots(folder, built, state, metrics, data.val, labels, probs, card, open_set)
        folder.write_report()
    val = metrics["validation"]
    name, value = task.headline(val)
    log.info("best epoch %d: val %s %.4f, log loss %.4f → %s", state.best_epoch, name.replace("_", "-"), value,
             val["log_loss"], folder.path)
    return RunResult(folder.path, state.best_epoch, value, val["log_loss"], seconds, name)


def _calibrate(folder: RunFolder, card: ModelCard, labels: np.ndarray, probs: np.ndarray,
               min_errors: int) -> tuple[ModelCard, dict]:
    """--calibrate: the task's temperature(s) minimising the validation log loss, kept in model.json (so
    every later command uses them); the validation figures before and after. Fitted and scored on the
    same pictures: an independent split says more (bench/)."""
    task = get_task(card.task)
    calibrated = task.calibrate(card, labels, probs, min_errors)
    before = task.metrics(labels, probs, card.classes, card)
    after = task.metrics(labels, task.calibrated(probs, calibrated), card.classes, calibrated)
    if folder.writes:
        write_card(folder.path, calibrated)
    scores = [k for k in ("log_loss", "ece") if k in before]
    temperature = calibrated.temperature
    log.info("--calibrate: temperature %s; validation %s", f"{temperature:.3f}" if isinstance(temperature, float)
             else f"per class {min(temperature):.3f}..{max(temperature):.3f}",
             ", ".join(f"{k.replace('_', ' ')} {before[k]:.4f} → {after[k]:.4f}" for k in scores))
    return calibrated, {"temperature": temperature, "fitted_on": "validation",
                        "before": {k: before[k] for k in scores}, "after": {k: after[k] for k in scores}}


def _fit_open_set(config: TrainConfig, built: Built, data: PreparedData, card: ModelCard, probs: np.ndarray,
                  folder: RunFolder):
    """The out-of-distribution score and conformal sets (openset/fit.py) on the best model, kept in the
    card and ood.safetensors; None when both are off."""
    if config.ood == "none" and (not config.coverage or card.task != "single-label"):
        return None
    from .openset.fit import fit_open_set, outputs_from_cache

    cached = None
    if built.cached_train is not None:
        ordered = FeatureLoader(built.cached_train.features, 512, shuffle=False, device=built.cached_train.device)
        cached = outputs_from_cache(built.model, config.cache_before_last, ordered, built.val_loader)
    fit = fit_open_set(built.model, card, data.train, data.val, get_task(card.task).calibrated(probs, card),
                       method=config.ood, reject_rate=config.reject_rate, coverage=config.coverage,
                       outliers=_outlier_pictures(config, card) if config.outliers else None,
                       seed=config.data.seed, device=next(built.model.parameters()).device, cached=cached)
    if folder.writes:
        if fit.tensors:
            save_tensors(folder.path / OOD, fit.tensors)
        write_card(folder.path, fit.card)
    return fit


def _outlier_pictures(config: TrainConfig, card: ModelCard) -> np.ndarray:
    """--outliers: its pictures, decoded as the model sees them."""
    from .data.store import decode_rows

    paths = outlier_paths(config.outliers)
    p = card.preprocess
    pictures, ok, _ = decode_rows(paths, p.channels, p.size, trim=p.trim, cache=config.cache_settings(), resize=p.resize,
                                  crop=p.crop)
    if not len(ok):
        raise UserError(f"Received: --outliers {config.outliers} where no picture could be decoded; expected readable "
                        "pictures")
    return pictures


def _write_plots(folder: RunFolder, built: Built, state, metrics: dict, val: DecodedImages, labels: np.ndarray,
                 probs: np.ndarray, card: ModelCard, open_set=None) -> None:
    """curves.png, then confusion.png and the interpretation pictures (report/interpretation.py), or for
    several labels per picture each class's precision-recall curve with its threshold (pr_curves.png) and
    the highest-loss pictures (worst_pictures.png)."""
    from .report.interpretation import write_interpretation, write_multi_label_interpretation, write_open_set
    from .report.plots import plot_confusion, plot_curves, plot_pr_curves

    folder.save_figure(plot_curves(state.history, state.best_epoch), "curves.png")
    if open_set is not None:
        write_open_set(folder, card, open_set, val, probs)
    if card.task == "multi-label":
        folder.save_figure(plot_pr_curves(labels, probs, card.classes, card.thresholds), "pr_curves.png")
        write_multi_label_interpretation(folder, card, val, labels, probs)
        return
    folder.save_figure(plot_confusion(np.asarray(metrics["validation"]["confusion"]), card.classes), "confusion.png")
    write_interpretation(folder, built.model, built.card, metrics, val, labels, probs, card.classes)
