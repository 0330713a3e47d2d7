"""Temperature scaling (Guo et al. 2017): one number T fitted on the validation split so that
softmax(logits / T) has the lowest log loss. Accuracy is unchanged (the order of the logits is);
the probabilities stop being over- (T > 1) or under-confident (T < 1). For several labels per picture,
one T per class on its sigmoid (each class's binary log loss). Pure numpy."""
from __future__ import annotations

import logging

import numpy as np

from ..tasks.single_label import log_softmax as _log_softmax

log = logging.getLogger(__name__)

LOG_T_RANGE = (-3.0, 3.0)  # T between 0.05 and 20
# Below this many validation errors a temperature is not allowed under 1 (to sharpen): the fit is then
# driven by a handful of mistakes. On three Lite0 Dogs vs. Cats runs (3-7 errors in 320 pictures) a T fitted
# on half the pictures changed the other half's log loss from 0.033 / 0.061 / 0.063 to 0.026 / 0.095 / 0.081
# (300 random halves each, bench/calibration_rule.py); with 1,039 errors (airnet, Fashion-MNIST) the fit is
# kept (0.526 → 0.478).
MIN_ERRORS_TO_SHARPEN = 30


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same as softmax(logits / T), since log p is the logits less a constant per row."""
    if temperature == 1.0:
        return probs
    log_p = np.log(np.clip(probs.astype(np.float64), 1e-300, None))
    return np.exp(_log_softmax(log_p / temperature)).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    log_p = np.log(np.clip(probs.astype(np.float64), 1e-300, None))
    return float(-_log_softmax(log_p / temperature)[np.arange(len(labels)), labels].mean())


def _golden_minimum(loss, low: float, high: float) -> float:
    """The x in [low, high] minimising a unimodal `loss(x)`: golden-section search, 60 steps (the bracket
    shrinks to 1e-12 of its width)."""
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(b)
    return (low + high) / 2


def fit_temperature(probs: np.ndarray, labels: np.ndarray, min_errors: int = MIN_ERRORS_TO_SHARPEN) -> float:
    """The T minimising the log loss of `labels` under scaled(probs, T), searched on log T (the loss is
    convex in 1/T, so one minimum); not under 1 where the pictures hold fewer than `min_errors` mistakes."""
    t = float(np.exp(_golden_minimum(lambda log_t: nll(probs, labels, np.exp(log_t)), *LOG_T_RANGE)))
    return _refuse_to_sharpen(t, int((probs.argmax(1) != labels).sum()), min_errors)


def _refuse_to_sharpen(t: float, errors: int, min_errors: int, what: str = "") -> float:
    if t >= 1.0 or errors >= min_errors:
        return t
    log.info("calibration%s: T %.3f would sharpen on %d error(s), fewer than %d; kept at 1", what, t, errors,
             min_errors)
    return 1.0


def _logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def scaled_binary(probs: np.ndarray, temperatures) -> np.ndarray:
    """sigmoid(logit(p) / T), T per class (the last axis): several labels per picture."""
    t = np.asarray(temperatures, dtype=np.float64)
    if np.all(t == 1.0):
        return probs
    return (0.5 * (1 + np.tanh(0.5 * _logit(probs) / t))).astype(np.float32)


def binary_nll(probs: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of 0/1 `targets` under sigmoid(logit(p) / T), for one class."""
    z = _logit(probs) / temperature
    return float(np.mean(np.logaddexp(0, z) - targets * z))


def fit_binary_temperatures(probs: np.ndarray, targets: np.ndarray,
                            min_errors: int = MIN_ERRORS_TO_SHARPEN) -> list[float]:
    """One temperature per class (column), each minimising that class's binary log loss; 1.0 for a class
    that never occurs or always does on these pictures (nothing to fit it on), and not under 1 for a
    class with fewer than `min_errors` wrong decisions at 0.5."""
    temperatures = []
    for k in range(probs.shape[1]):
        y = targets[:, k].astype(np.float64)
        if y.min() == y.max():
            temperatures.append(1.0)
            continue
        log_t = _golden_minimum(lambda v: binary_nll(probs[:, k], y, np.exp(v)), *LOG_T_RANGE)
        errors = int(((probs[:, k] >= 0.5) != (y == 1)).sum())
        temperatures.append(_refuse_to_sharpen(float(np.exp(log_t)), errors, min_errors, f" of class {k}"))
    return temperatures
