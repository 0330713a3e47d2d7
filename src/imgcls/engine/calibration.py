"""Temperature scaling (Guo et al. 2017): one number T fitted on the validation split so that
softmax(logits / T) has the lowest log loss. Accuracy is unchanged (the order of the logits is);
the probabilities stop being over- (T > 1) or under-confident (T < 1). Pure numpy."""
from __future__ import annotations

import numpy as np

from ..tasks.single_label import log_softmax as _log_softmax

LOG_T_RANGE = (-3.0, 3.0)  # T between 0.05 and 20


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same as softmax(logits / T), since log p is the logits less a constant per row."""
    if temperature == 1.0:
        return probs
    log_p = np.log(np.clip(probs.astype(np.float64), 1e-300, None))
    return np.exp(_log_softmax(log_p / temperature)).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    log_p = np.log(np.clip(probs.astype(np.float64), 1e-300, None))
    return float(-_log_softmax(log_p / temperature)[np.arange(len(labels)), labels].mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the log loss of `labels` under scaled(probs, T): golden-section search on log T
    (the loss is convex in 1/T, so one minimum)."""
    low, high = LOG_T_RANGE
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(probs, labels, np.exp(a)), nll(probs, labels, np.exp(b))
    for _ in range(60):  # the bracket shrinks to 1e-12 of its width
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(probs, labels, np.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(probs, labels, np.exp(b))
    return float(np.exp((low + high) / 2))
