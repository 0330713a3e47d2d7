"""Pure functions from labels and predicted probabilities to the numbers a run reports."""
from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean()) if len(labels) else float("nan")


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-15) -> float:
    """Mean negative log probability of the true class, clipped as Kaggle clips it."""
    if not len(labels):
        return float("nan")
    p = np.clip(probs[np.arange(len(labels)), labels], eps, 1 - eps)
    return float(-np.log(p).mean())


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class(matrix: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    return {name: {"precision": round(float(p), 4), "recall": round(float(r), 4), "support": int(s)}
            for name, p, r, s in zip(classes, precision, recall, actual)}


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> tuple[list[dict], float]:
    """Confidence (the top probability) in equal-width bins: per bin its count, mean confidence and
    accuracy; and the expected calibration error, sum over bins of count/N * |accuracy - confidence|
    (Guo et al. 2017, 15 bins)."""
    if not len(labels):
        return [], float("nan")
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            conf, acc = float(confidence[members].mean()), float(correct[members].mean())
            ece += members.mean() * abs(acc - conf)
            rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(members.sum()),
                         "confidence": round(conf, 6), "accuracy": round(acc, 6)})
    return rows, float(ece)


def most_confused(matrix: np.ndarray, classes: list[str], top: int = 10) -> list[tuple[str, str, int]]:
    """(true, predicted, count) for the largest off-diagonal cells (fastai's most_confused)."""
    matrix = np.asarray(matrix)
    pairs = [(classes[i], classes[j], int(matrix[i, j])) for i in range(len(classes)) for j in range(len(classes))
             if i != j and matrix[i, j] > 0]
    return sorted(pairs, key=lambda p: -p[2])[:top]


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    matrix = confusion(labels, probs.argmax(1), len(classes))
    return {"accuracy": round(accuracy(labels, probs), 6), "log_loss": round(log_loss(labels, probs), 6),
            "ece": round(reliability(labels, probs)[1], 6),
            "count": int(len(labels)), "per_class": per_class(matrix, classes),
            "confusion": matrix.tolist(), "classes": classes}
