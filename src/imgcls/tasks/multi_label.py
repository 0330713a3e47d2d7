"""Several labels per picture (fastai's MultiCategoryBlock, Planet's `agriculture clear road`):
labels are a multi-hot matrix, the loss is binary cross-entropy with logits, probabilities are
sigmoids, and a label is predicted when its probability reaches its class's threshold, chosen on
validation to maximise that class's F1 and kept in the model card."""
from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (0.5 * (1 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)  # no overflow


def best_f1_threshold(targets: np.ndarray, probs: np.ndarray) -> float:
    """The threshold on one class's probabilities with the highest F1 on these pictures (the midpoint
    between the deciding probability and the next lower one); 0.5 when the class never occurs."""
    positives = int(targets.sum())
    if positives == 0:
        return DEFAULT_THRESHOLD
    order = np.argsort(-probs, kind="stable")
    sorted_probs, hits = probs[order], targets[order].astype(np.float64)
    tp = np.cumsum(hits)
    predicted = np.arange(1, len(probs) + 1)
    f1 = 2 * tp / (predicted + positives)
    # Only cut where the probability changes: ties are decided together.
    cuts = np.flatnonzero(np.r_[sorted_probs[1:] < sorted_probs[:-1], True])
    best = cuts[np.argmax(f1[cuts])]
    below = sorted_probs[best + 1] if best + 1 < len(sorted_probs) else 0.0
    return float((sorted_probs[best] + below) / 2)


def _together(errors: np.ndarray, classes: list[str], top: int = 10) -> list[list]:
    """The label pairs most often wrong on the same picture ((N, K) booleans: missed, or added), as
    [label, label, pictures], most first."""
    counts = errors.astype(np.int64).T @ errors.astype(np.int64)
    a, b = np.triu_indices(len(classes), 1)
    order = np.argsort(-counts[a, b], kind="stable")[:top]
    return [[classes[a[i]], classes[b[i]], int(counts[a[i], b[i]])] for i in order if counts[a[i], b[i]] > 0]


class MultiLabel:
    name = "multi-label"

    # -- outputs ---------------------------------------------------------------------------------
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def probabilities_torch(self, logits):
        return logits.float().sigmoid()

    def calibrated(self, probs: np.ndarray, card) -> np.ndarray:
        """Each class's temperature (train --calibrate) applied to its sigmoid; unchanged without one."""
        from ..engine.calibration import scaled_binary

        return scaled_binary(probs, card.temperature)

    def calibrate(self, card, targets: np.ndarray, probs: np.ndarray, min_errors: int = 30):
        """train --calibrate: one temperature per class (its binary log loss on these pictures), and each
        class's threshold moved with it so that every decision stays as it was (the scaling is monotone)."""
        from ..engine.calibration import fit_binary_temperatures, scaled_binary

        temperatures = [round(t, 6) for t in fit_binary_temperatures(probs, targets, min_errors)]
        thresholds = scaled_binary(self.thresholds(card, probs.shape[1])[None, :], temperatures)[0]
        return card.with_(temperature=temperatures, thresholds=[round(float(t), 6) for t in thresholds])

    def thresholds(self, card, num_classes: int) -> np.ndarray:
        given = getattr(card, "thresholds", None) if card is not None else None
        return np.asarray(given if given is not None else [DEFAULT_THRESHOLD] * num_classes, dtype=np.float64)

    def decide(self, probs: np.ndarray, card=None) -> np.ndarray:
        """(N, K) booleans: each class whose probability reaches its threshold."""
        return probs >= self.thresholds(card, probs.shape[1])[None, :]

    def ranked(self, probs: np.ndarray) -> np.ndarray:
        return np.argsort(-probs, 1, kind="stable")

    def answer(self, probs: np.ndarray, classes: list[str], card=None, top_k: int = 5) -> dict:
        chosen = self.decide(probs[None], card)[0]
        order = self.ranked(probs[None])[0]
        return {"labels": [classes[i] for i in order if chosen[i]],
                "top": [{"class": classes[i], "probability": round(float(probs[i]), 6)} for i in order[:top_k]]}

    def choose_thresholds(self, targets: np.ndarray, probs: np.ndarray) -> list[float]:
        """One threshold per class, each maximising that class's F1 on these (validation) pictures."""
        return [round(best_f1_threshold(targets[:, k], probs[:, k]), 6) for k in range(probs.shape[1])]

    # -- training (torch, imported by the methods) ---------------------------------------------------
    def loss_sum(self, logits, targets, weight=None, label_smoothing: float = 0.0):
        """Binary cross-entropy with logits, the mean over classes summed over the batch; `weight` is
        BCE's pos_weight per class (--class-weight balanced); label smoothing pulls 0/1 towards 0.5."""
        import torch.nn.functional as F

        targets = targets.float()
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight,
                                                  reduction="none").mean(1).sum()

    def correct(self, logits, targets):
        """Per picture, the share of its labels decided right at 0.5 (1 - Hamming loss), summed."""
        return ((logits > 0) == (targets > 0.5)).float().mean(1).sum()

    def evaluate_batch(self, logits, labels, flipped=None):
        import torch.nn.functional as F

        prob = logits.float().sigmoid()
        if flipped is not None:
            prob = (prob + flipped.float().sigmoid()) / 2
        loss = F.binary_cross_entropy(prob.clamp(1e-7, 1 - 1e-7), labels.float(), reduction="none").mean(1).sum()
        return prob, loss.item(), ((prob >= 0.5) == (labels > 0)).float().mean(1).sum().item()

    def loss_weight(self, labels, num_classes: int):
        """--class-weight balanced: BCE's pos_weight, negatives / positives per class (at least 1 positive)."""
        positives = labels.double().sum(0).clamp(min=1)
        return ((len(labels) - positives) / positives).float()

    # -- labels ----------------------------------------------------------------------------------
    def encode(self, labels: list[str], classes: list[str], sep: str = " ") -> np.ndarray:
        """Label cells ("car bicycle"; "" for none) → a multi-hot (N, K) uint8 matrix."""
        index = {c: i for i, c in enumerate(classes)}
        hot = np.zeros((len(labels), len(classes)), dtype=np.uint8)
        for row, cell in enumerate(labels):
            for label in (t for t in cell.split(sep) if t):
                hot[row, index[label]] = 1
        return hot

    def decided_text(self, decided, classes: list[str], sep: str = " ") -> str:
        return self.label_text(decided, classes, sep)

    def p_given(self, probs: np.ndarray, label) -> float:
        """How plausible the given label set is: exp(-mean binary cross-entropy) over the classes, the
        geometric mean of each label's probability of being as given (1 when all agree)."""
        p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
        given = np.asarray(label) > 0
        return float(np.exp(np.mean(np.where(given, np.log(p), np.log(1 - p)))))

    def label_text(self, label, classes: list[str], sep: str = " ") -> str:
        """One picture's labels as the run's files write them (split.csv, predictions): `sep`-joined."""
        return sep.join(classes[k] for k in np.flatnonzero(label))

    # -- scoring ---------------------------------------------------------------------------------
    def metrics(self, targets: np.ndarray, probs: np.ndarray, classes: list[str], card=None) -> dict:
        """Macro mAP, micro and macro F1 at the thresholds, exact-match ratio, Hamming loss, mean BCE,
        and per class its AP, precision, recall and support."""
        from sklearn.metrics import average_precision_score

        targets = targets.astype(bool)
        predicted = self.decide(probs, card)
        tp = (predicted & targets).sum(0).astype(np.float64)
        fp = (predicted & ~targets).sum(0).astype(np.float64)
        fn = (~predicted & targets).sum(0).astype(np.float64)
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
        recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
        f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)
        present = targets.any(0)
        ap = np.array([average_precision_score(targets[:, k], probs[:, k]) if present[k] else np.nan
                       for k in range(len(classes))])
        clipped = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
        bce = -(targets * np.log(clipped) + ~targets * np.log(1 - clipped)).mean() if len(targets) else float("nan")
        micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
        count = len(targets)
        return {"mAP": round(float(np.nanmean(ap)) if present.any() else float("nan"), 6),
                "micro_f1": round(float(micro), 6), "macro_f1": round(float(f1[present].mean()) if present.any() else 0.0, 6),
                "exact_match": round(float((predicted == targets).all(1).mean()) if count else float("nan"), 6),
                "hamming_loss": round(float((predicted != targets).mean()) if count else float("nan"), 6),
                "log_loss": round(float(bce), 6), "count": int(count),
                "per_class": {name: {"ap": None if np.isnan(a) else round(float(a), 4),
                                     "precision": round(float(p), 4), "recall": round(float(r), 4),
                                     "f1": round(float(f), 4), "support": int(s)}
                              for name, a, p, r, f, s in zip(classes, ap, precision, recall, f1, targets.sum(0))},
                "thresholds": [round(float(t), 6) for t in self.thresholds(card, len(classes))],
                "missed_together": _together(targets & ~predicted, classes),
                "added_together": _together(predicted & ~targets, classes),
                "classes": classes}

    def headline(self, metrics: dict) -> tuple[str, float]:
        return "micro_f1", metrics["micro_f1"]

    def summary(self, metrics: dict) -> dict:
        return {k: metrics[k] for k in ("mAP", "micro_f1", "macro_f1", "exact_match", "count")}

    # -- the export contract ---------------------------------------------------------------------
    def contract(self, card) -> dict:
        calibrated = isinstance(card.temperature, list)
        return {"name": "logits", "activation": "sigmoid",
                "postprocess": ("divide each output by its class's temperature, then " if calibrated else "")
                + "sigmoid of each output; a class is predicted where it reaches its threshold",
                **({"temperature": list(card.temperature)} if calibrated else {}),
                "thresholds": [float(t) for t in self.thresholds(card, card.num_classes)],
                "decision": "probability >= threshold, per class"}
