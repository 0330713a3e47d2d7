"""What the fitted score and sets change in an answer (torch-free: the onnx backend, predict's file and
serve use it): "unknown" where the score passes the card's threshold (for several labels, only where no
label passed its own), and the conformal set's class names."""
from __future__ import annotations

import numpy as np

from ..errors import UserError

UNKNOWN = "unknown"


def unknown(card, decided: np.ndarray, ood: np.ndarray | None) -> np.ndarray:
    """(N,) booleans: the pictures to answer "unknown"; `decided` is the task's decision (class indices,
    or an (N, K) label matrix)."""
    if ood is None or not card.ood:
        return np.zeros(len(decided), dtype=bool)
    beyond = ood > card.ood["threshold"]
    return beyond & ~decided.any(1) if decided.ndim == 2 else beyond


def require_sets(card, where: str) -> None:
    if card.task != "single-label":
        raise UserError(f"Received: --sets for {where}, a run with several labels per picture; expected a run with "
                        "one class per picture (each label's own threshold already decides it)")
    if not card.conformal:
        raise UserError(f"Received: --sets for {where}, a run without conformal calibration (trained before "
                        "these existed, or with --coverage none); expected a run trained with --coverage (train it again)")


def require_score(card, where: str, flag: str = "--outliers") -> None:
    if not card.ood:
        raise UserError(f"Received: {flag} for {where}, a run without an out-of-distribution score (trained "
                        "before it existed, or with --ood none); expected a run trained with --ood (train it again)")
