"""The run's self-explanation (fastai's ClassificationInterpretation, with Grad-CAM): validation
pictures wrong first, the top losses with their heatmaps, the most-confused pairs with examples,
per-class precision/recall and a reliability diagram. Each is a PNG in the run folder that
report.html embeds."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..engine.metrics import most_confused, reliability
from ..runs import RunFolder, pick_examples
from .plots import plot_grid, plot_precision_recall, plot_reliability

log = logging.getLogger(__name__)

TOP_LOSSES = 8
CONFUSED_PAIRS = 4
EXAMPLES_PER_PAIR = 4


def wrong_first(labels: np.ndarray, predicted: np.ndarray, count: int = 32) -> np.ndarray:
    """Up to `count` validation indices: the wrong ones first (in validation order), then correct ones
    spread over the classes."""
    wrong = np.flatnonzero(predicted != labels)[:count]
    right = pick_examples(labels, count, seed=1)
    right = right[predicted[right] == labels[right]][:count - len(wrong)]
    return np.concatenate([wrong, right]).astype(np.int64)


def _top_losses(folder: RunFolder, model: torch.nn.Module, card, val, labels: np.ndarray,
                probs: np.ndarray, classes: list[str]) -> None:
    """top_losses.png: the highest-loss validation pictures with the predicted class's Grad-CAM."""
    from ..explain import overlay_on_input
    from ..gradcam import default_layers, explain_batch

    loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1))
    idx = np.argsort(-loss)[:TOP_LOSSES]
    shown = val.pictures(idx)  # only these few are read from the cache
    images = card.preprocess.normalise_torch(shown, next(model.parameters()).device)
    layers = default_layers(model, card.preprocess.channels, card.preprocess.size)
    heat = explain_batch(model, images, layers).heatmaps
    overlays = np.stack([overlay_on_input(p, h) for p, h in zip(shown.numpy(), heat)])
    predicted = probs.argmax(1)
    titles = [f"{classes[predicted[i]]}/{classes[labels[i]]}\nloss {loss[i]:.2f} p {probs[i, predicted[i]]:.2f}"
              for i in idx]
    folder.save_figure(plot_grid(overlays, titles, ncols=min(TOP_LOSSES, 8)), "top_losses.png")


def _confused(folder: RunFolder, val, matrix: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
              classes: list[str]) -> None:
    """confused.png: examples of the most-confused pairs, titled true→predicted."""
    idx, titles = [], []
    for true, guess, count in most_confused(matrix, classes, CONFUSED_PAIRS):
        t, g = classes.index(true), classes.index(guess)
        members = np.flatnonzero((labels == t) & (predicted == g))[:EXAMPLES_PER_PAIR]
        idx += members.tolist()
        titles += [f"{true}→{guess} ({count})"] * len(members)
    if idx:
        folder.save_figure(plot_grid(val.pictures(np.asarray(idx)).numpy(), titles, ["red"] * len(idx),
                                     ncols=EXAMPLES_PER_PAIR), "confused.png")


def write_interpretation(folder: RunFolder, model: torch.nn.Module, card, metrics: dict, val,
                         labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """val_predictions.png, top_losses.png, confused.png, per_class.png and reliability.png."""
    predicted = probs.argmax(1)
    idx = wrong_first(labels, predicted)
    titles = [f"{classes[predicted[i]]}/{classes[labels[i]]}" for i in idx]
    colors = ["black" if predicted[i] == labels[i] else "red" for i in idx]
    folder.save_figure(plot_grid(val.pictures(idx).numpy(), titles, colors), "val_predictions.png")
    validation = metrics["validation"]
    folder.save_figure(plot_precision_recall(validation["per_class"]), "per_class.png")
    folder.save_figure(plot_reliability(*reliability(labels, probs)), "reliability.png")
    _confused(folder, val, np.asarray(validation["confusion"]), labels, predicted, classes)
    try:
        _top_losses(folder, model, card, val, labels, probs, classes)
    except Exception as error:  # noqa: BLE001 - a picture for the report must never fail a finished run
        log.warning("top_losses.png not drawn: %s", error)


def write_multi_label_interpretation(folder: RunFolder, card, val, targets: np.ndarray, probs: np.ndarray,
                                     count: int = 16) -> None:
    """worst_pictures.png: the validation pictures with the highest loss (mean binary cross-entropy over
    the labels), titled with the labels the model missed (-) and added (+) at its thresholds."""
    from ..tasks import get_task

    task = get_task(card.task)
    loss = np.array([-np.log(task.p_given(p, t)) for p, t in zip(probs, targets)])
    idx = np.argsort(-loss, kind="stable")[:count]
    decided = task.decide(probs[idx], card)
    given = targets[idx] > 0
    titles = ["\n".join(filter(None, [" ".join(f"-{card.classes[k]}" for k in np.flatnonzero(g & ~d)),
                                      " ".join(f"+{card.classes[k]}" for k in np.flatnonzero(d & ~g))])) or "right"
              for g, d in zip(given, decided)]
    colors = ["black" if t == "right" else "red" for t in titles]
    folder.save_figure(plot_grid(val.pictures(idx).numpy(), titles, colors), "worst_pictures.png")


def write_open_set(folder: RunFolder, card, fit, val, probs: np.ndarray, count: int = 16) -> None:
    """ood.png (the score's histogram and threshold), rejected.png (the validation pictures the score puts
    furthest outside) and coverage.png (conformal coverage and set size against the promised level)."""
    from ..tasks import get_task
    from .plots import plot_coverage, plot_ood_scores

    if fit.val_raw is not None:
        folder.save_figure(plot_ood_scores(fit.val_raw, fit.outlier_raw, fit.card.ood["raw_threshold"],
                                           fit.card.ood["method"]), "ood.png")
        idx = np.argsort(-fit.val_raw, kind="stable")[:count]
        task = get_task(card.task)
        decided = task.decide(probs[idx], card)
        rejected = fit.val_raw[idx] > fit.card.ood["raw_threshold"]
        titles = [f"{task.decided_text(d, card.classes)}\n{'unknown' if r else 'kept'} {s:.3g}"
                  for d, r, s in zip(decided, rejected, fit.val_raw[idx])]
        folder.save_figure(plot_grid(val.pictures(idx).numpy(), titles, ["red" if r else "black" for r in rejected]),
                           "rejected.png")
    if "conformal" in fit.metrics:
        folder.save_figure(plot_coverage(fit.metrics["conformal"]["curve"], fit.metrics["conformal"]["coverage"]),
                           "coverage.png")
