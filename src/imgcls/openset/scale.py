"""The out-of-distribution score's scale and how well it separates (torch-free: the onnx backend and
evaluate use it)."""
from __future__ import annotations

import numpy as np


def percentile(raw: np.ndarray, val_sorted: np.ndarray) -> np.ndarray:
    """The share of in-distribution validation pictures whose raw score is at most each raw score."""
    return (np.searchsorted(val_sorted, raw, side="right") / max(len(val_sorted), 1)).astype(np.float32)


def separation(in_scores: np.ndarray, out_scores: np.ndarray) -> dict:
    """AUROC (outliers as positives) and the share of outliers accepted when 95 % of in-distribution
    pictures are (FPR at 95 % TPR)."""
    from sklearn.metrics import roc_auc_score

    truth = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    scores = np.r_[in_scores, out_scores].astype(np.float64)
    kept = np.quantile(in_scores, 0.95)
    return {"auroc": round(float(roc_auc_score(truth, scores)), 6),
            "fpr95": round(float(np.mean(out_scores <= kept)), 6)}
