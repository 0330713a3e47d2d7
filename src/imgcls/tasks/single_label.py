"""One class per picture: cross-entropy, softmax, argmax, accuracy and log loss, temperature scaling."""
from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


class SingleLabel:
    name = "single-label"

    # -- outputs ---------------------------------------------------------------------------------
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Logits (N, K) → softmax probabilities, float32 (numpy: the onnx backend has no torch)."""
        return np.exp(log_softmax(logits)).astype(np.float32)

    def probabilities_torch(self, logits):
        return logits.float().softmax(1)

    def calibrated(self, probs: np.ndarray, card) -> np.ndarray:
        """The run's temperature (train --calibrate) applied; unchanged when it has none."""
        from ..engine.calibration import scaled

        return scaled(probs, card.temperature)

    def calibrate(self, card, labels: np.ndarray, probs: np.ndarray, min_errors: int = 30):
        """train --calibrate: the card with the temperature that minimises these pictures' log loss (never
        under 1 on fewer than `min_errors` errors: engine/calibration.py)."""
        from ..engine.calibration import fit_temperature

        return card.with_(temperature=round(fit_temperature(probs, labels, min_errors), 6))

    def decide(self, probs: np.ndarray, card=None) -> np.ndarray:
        """The predicted class index per picture."""
        return probs.argmax(1)

    def ranked(self, probs: np.ndarray) -> np.ndarray:
        """Class indices per picture, most probable first."""
        return np.argsort(-probs, 1, kind="stable")

    def answer(self, probs: np.ndarray, classes: list[str], card=None, top_k: int = 5) -> dict:
        """One picture's answer as serve gives it: the top classes with their probabilities."""
        order = self.ranked(probs[None])[0][:top_k]
        return {"top": [{"class": classes[i], "probability": round(float(probs[i]), 6)} for i in order]}

    # -- training (torch, imported by the methods: predicting with onnx never loads it) -------------
    def loss_sum(self, logits, targets, weight=None, label_smoothing: float = 0.0):
        """Cross-entropy summed over the batch; targets are class indices or mixed (MixUp) distributions;
        `weight` the per-class loss weights (--class-weight balanced)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing, reduction="sum")

    def correct(self, logits, targets):
        """Pictures whose top class is the label (for mixed targets: the larger share)."""
        hard = targets.argmax(1) if targets.ndim == 2 else targets
        return (logits.argmax(1) == hard).sum()

    def evaluate_batch(self, logits, labels, flipped=None):
        """(probabilities, summed loss, correct count) of one evaluation batch; `flipped`: the mirror
        images' logits, averaged in (TTA)."""
        import math

        import torch
        import torch.nn.functional as F

        log_prob = logits.float().log_softmax(1)
        if flipped is not None:
            log_prob = torch.logsumexp(torch.stack([log_prob, flipped.float().log_softmax(1)]), 0) - math.log(2)
        prob = log_prob.exp()
        return prob, F.nll_loss(log_prob, labels, reduction="sum").item(), (prob.argmax(1) == labels).sum().item()

    def loss_weight(self, labels, num_classes: int):
        """--class-weight balanced: N / (K * pictures of the class), scikit-learn's "balanced"."""
        import torch

        counts = torch.bincount(labels, minlength=num_classes).double().clamp(min=1)
        return (len(labels) / (num_classes * counts)).float()

    # -- labels ----------------------------------------------------------------------------------
    def encode(self, labels: list[str], classes: list[str], sep: str = " ") -> np.ndarray:
        """Class names (as split.csv and the prediction files write them) → class indices."""
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[label] for label in labels], dtype=np.int64)

    def decided_text(self, decided, classes: list[str], sep: str = " ") -> str:
        return classes[int(decided)]

    def p_given(self, probs: np.ndarray, label) -> float:
        """The probability of the picture's given label (audit and --drop-implausible rank by it)."""
        return float(probs[int(label)])

    def label_text(self, label, classes: list[str], sep: str = " ") -> str:
        """One picture's label as the run's files write it (split.csv, predictions)."""
        return classes[int(label)]

    # -- scoring ---------------------------------------------------------------------------------
    def metrics(self, labels: np.ndarray, probs: np.ndarray, classes: list[str], card=None) -> dict:
        from ..engine.metrics import classification_metrics

        return classification_metrics(labels, probs, classes)

    def headline(self, metrics: dict) -> tuple[str, float]:
        """The one figure that says how good the answers are."""
        return "accuracy", metrics["accuracy"]

    def summary(self, metrics: dict) -> dict:
        """The few figures a command prints."""
        return {k: metrics[k] for k in ("accuracy", "log_loss", "count")}

    # -- the export contract ---------------------------------------------------------------------
    def contract(self, card) -> dict:
        postprocess = ("softmax over the last axis" if card.temperature == 1.0
                       else "divide by temperature, then softmax over the last axis")
        return {"name": "logits", "activation": "softmax", "postprocess": postprocess,
                "temperature": card.temperature, "decision": "argmax"}
