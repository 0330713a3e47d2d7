"""After training: fit the run's out-of-distribution score and its conformal threshold on the pictures
the run already decoded (one inference pass over its training and validation splits), then keep them
in the model card and ood.safetensors so that every later command answers "unknown" and sets.

The score a user sees is the raw score's place among the validation pictures' (0..1: the share of
in-distribution validation pictures that scored lower), so that it reads the same for every method and
can be averaged over an ensemble; a picture is "unknown" above the card's threshold on that scale."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data.decode import inference_batch_size
from ..data.loader import BatchLoader
from . import conformal
from .scale import percentile, separation
from ..choices import OOD_SCORES
from .scores import WithOodScore, fit_score

log = logging.getLogger(__name__)

# --ood auto without --outliers: the method with the best mean AUROC over bench/openset.py's pairs.
DEFAULT_METHOD = "mahalanobis"
CURVE_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)  # report.html's coverage against set size


@dataclass
class OpenSetFit:
    card: object  # the model card with `ood` and `conformal` filled in
    tensors: dict  # ood.safetensors: the score's fitted tensors and the validation scores, sorted
    metrics: dict  # what metrics.json keeps: per-method AUROC (with outliers), the threshold, coverage
    val_raw: np.ndarray | None = None  # the validation pictures' raw scores (report.html's histogram)
    outlier_raw: np.ndarray | None = None


def _outputs(model: torch.nn.Module, batches, features_of=None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and logits of every batch, in order: `features_of(batch)` (default: the model's
    forward_features on normalised pictures) then the head."""
    features_of = features_of or model.forward_features
    features, logits = [], []
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            f = features_of(batch)
            features.append(f.float().cpu().numpy())
            logits.append(model.forward_head(f).float().cpu().numpy())
    return np.concatenate(features), np.concatenate(logits)


def outputs_from_cache(model: torch.nn.Module, keep_last: int, train_loader, val_loader):
    """(training features, (validation features, logits)) from the frozen-feature cache's prefix outputs:
    only the blocks after the cached ones run (none when the whole backbone is frozen), so fitting does
    not pass the pictures through the frozen backbone again. None for a model whose pooled features are
    not its blocks' output (fusion concatenates its members')."""
    from ..models.base import Classifier

    if type(model).forward_features is not Classifier.forward_features:
        return None
    k = model.frozen_prefix(keep_last)

    def rest(z: torch.Tensor) -> torch.Tensor:
        return model.forward_blocks(z, k)

    return (_outputs(model, (z for z, _ in train_loader), rest)[0],
            _outputs(model, (z for z, _ in val_loader), rest))


def _loader(card, data, device):
    p = card.preprocess
    loader = BatchLoader(data, inference_batch_size(p.channels, p.size), p.mean, p.std, shuffle=False, device=device)
    return (images for images, _ in loader)


def _best_threshold(val_pct: np.ndarray, out_pct: np.ndarray) -> float:
    """With pictures known to be outside: the percentile threshold that best separates them (Youden's J:
    outliers rejected less in-distribution pictures rejected)."""
    candidates = np.unique(np.r_[val_pct, 1.0])
    j = [(np.mean(out_pct > t) - np.mean(val_pct > t), -t) for t in candidates]
    return float(candidates[max(range(len(j)), key=j.__getitem__)])


def fit_open_set(model: torch.nn.Module, card, train, val, val_probs: np.ndarray, *, method: str,
                 reject_rate: float, coverage: float | None, outliers: np.ndarray | None = None,
                 seed: int = 0, device: torch.device = torch.device("cpu"), cached=None) -> OpenSetFit:
    """Fit the score (`method`, or with "auto" the best on `outliers` when given, else DEFAULT_METHOD) on
    the training split's features, its threshold on validation, and the conformal threshold on every
    validation picture (measured by cross-fitting its halves). `val_probs`: the probabilities predict gives
    (calibrated as the card says); `outliers`: uint8 pictures known to be outside the classes; `cached`:
    outputs_from_cache's features, when the run has them."""
    start = time.perf_counter()
    metrics: dict = {}
    tensors: dict = {}
    fitted = None
    if method != "none":
        candidates = OOD_SCORES if method == "auto" and outliers is not None else \
            [DEFAULT_METHOD if method == "auto" else method]
        # msp and energy read the logits only: the training pictures are passed through only for the others.
        needs_training = any(name in ("mahalanobis", "knn") for name in candidates)
        if cached is not None:
            train_features, (val_features, val_logits) = cached
        else:
            train_features = _outputs(model, _loader(card, train, device))[0] if needs_training else np.zeros((0, 0))
            val_features, val_logits = _outputs(model, _loader(card, val, device))
        if outliers is not None:
            normalised = (card.preprocess.normalise_torch(torch.from_numpy(outliers[i:i + 256]), device)
                          for i in range(0, len(outliers), 256))
            out_features, out_logits = _outputs(model, normalised)
        raw = {}
        for name in candidates:
            score = fit_score(name, card.task, train_features, train.labels.numpy(), seed).to(device)
            with torch.inference_mode():
                raw[name] = [score(torch.from_numpy(f).to(device), torch.from_numpy(lg).to(device)).cpu().numpy()
                             for f, lg in ((val_features, val_logits),) + (((out_features, out_logits),)
                                                                            if outliers is not None else ())]
            if outliers is not None:
                metrics.setdefault("outliers_seen", {})[name] = separation(*raw[name])
            if fitted is None or outliers is not None and metrics["outliers_seen"][name]["auroc"] > \
                    metrics["outliers_seen"][fitted[0]]["auroc"]:
                fitted = (name, score)
        name, score = fitted
        val_sorted = np.sort(raw[name][0]).astype(np.float32)
        val_pct = percentile(raw[name][0], val_sorted)
        out_pct = percentile(raw[name][1], val_sorted) if outliers is not None else None
        threshold = _best_threshold(val_pct, out_pct) if outliers is not None else 1 - reject_rate
        raw_threshold = float(np.quantile(val_sorted, min(threshold, 1.0))) if len(val_sorted) else 0.0
        tensors = {f"score.{k}": v.detach().cpu().contiguous() for k, v in score.state_dict().items()}
        tensors["val_sorted"] = torch.from_numpy(val_sorted)
        card = card.with_(ood={"method": name, "threshold": round(threshold, 6), "raw_threshold": raw_threshold,
                               "reject_rate": reject_rate, "chosen_by": "outliers" if outliers is not None else
                               ("default" if method == "auto" else "flag")})
        metrics["ood"] = {**card.ood, "validation_rejected": round(float(np.mean(val_pct > threshold)), 6)}
        if outliers is not None:
            metrics["ood"]["outliers_rejected"] = round(float(np.mean(out_pct > threshold)), 6)
        log.info("out-of-distribution score: %s (%s); pictures above the %.3f point of validation's are unknown "
                 "(%.1f %% of validation)", name, card.ood["chosen_by"], threshold, 100 * metrics["ood"]["validation_rejected"])
    if coverage and card.task == "single-label":
        metrics["conformal"] = _fit_conformal(card, val, val_probs, coverage, seed)
        card = card.with_(conformal={k: metrics["conformal"][k] for k in ("method", "coverage", "threshold",
                                                                          "calibration_pictures")})
    if "ood" in metrics:
        metrics["ood"]["fit_seconds"] = round(time.perf_counter() - start, 3)
    return OpenSetFit(card, tensors, metrics, raw[name][0] if fitted else None,
                      raw[name][1] if fitted and outliers is not None else None)


def _fit_conformal(card, val, val_probs: np.ndarray, coverage: float, seed: int) -> dict:
    """The APS threshold on every validation picture (the more calibration pictures, the less the
    promise wobbles: its spread is about sqrt(coverage (1 - coverage) / n)); the coverage and mean set
    size it gives are measured by cross-fitting: calibrated on one seeded half, measured on the other,
    both ways, at the asked level and along CURVE_LEVELS."""
    labels = val.labels.numpy()
    u = conformal.uniform_draws(val.pictures(np.arange(len(val))).numpy())
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:]))

    def measured(level: float) -> dict:
        both = [conformal.coverage_and_size(conformal.prediction_sets(
            val_probs[held], u[held], conformal.calibrate(val_probs[fit], labels[fit], u[fit], level)), labels[held])
            for fit, held in (halves, halves[::-1])]
        return {k: round(float(np.mean([b[k] for b in both])), 6) for k in both[0]}

    threshold = conformal.calibrate(val_probs, labels, u, coverage)
    cross = measured(coverage)
    curve = [{"level": level, **measured(level)} for level in CURVE_LEVELS]
    log.info("conformal sets (APS) at %.2f: threshold %.4f on %d validation pictures; cross-fitted on their halves: "
             "coverage %.3f, mean set size %.2f", coverage, threshold, len(labels), cross["coverage"],
             cross["mean_set_size"])
    return {"method": "aps", "coverage": coverage, "threshold": round(threshold, 6), "calibration_pictures": len(labels),
            "cross_fitted": cross, "curve": curve}


def with_score(model: torch.nn.Module, card, tensors: dict) -> torch.nn.Module:
    """The model that also answers the card's score (WithOodScore), from ood.safetensors' tensors."""
    from .scores import empty_score

    own = {k[len("score."):]: v for k, v in tensors.items() if k.startswith("score.")}
    return WithOodScore(model, empty_score(card.ood["method"], card.task, own))
