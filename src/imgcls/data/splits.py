"""Seeded, reproducible train/validation splits: stratified, random or balanced."""
from __future__ import annotations

import numpy as np

from ..errors import UserError


def split_indices(labels: np.ndarray, val_fraction: float, kind: str = "stratified",
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, val) index arrays into `labels`, each sorted.

    stratified: each class split in the same proportion; random: one shuffle of everything;
    balanced: every class cut down to the smallest class's count first, then stratified, so both
    sides hold equal numbers per class (the Dogs vs. Cats walkthrough's split).
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    if labels.ndim == 2 and kind == "stratified":
        return _iterative_split(labels, val_fraction, seed)
    if kind == "random":
        order = rng.permutation(n)
        n_val = _count(n, val_fraction)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    if kind not in ("stratified", "balanced"):
        raise UserError(f"Received: split={kind}; expected one of stratified, random, balanced")
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    if kind == "balanced":
        smallest = min(len(members) for members in per_class)
        per_class = [members[:smallest] for members in per_class]
    train, val = [], []
    for members in per_class:
        n_val = _count(len(members), val_fraction)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _iterative_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Several labels per picture: iterative stratification (Sechidis et al. 2011), which keeps every
    label's share, rare labels first, close to `val_fraction` on the validation side."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(labels)), labels))
    return np.sort(train), np.sort(val)


def kfold_indices(labels: np.ndarray, folds: int, fold: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) for fold `fold` of a seeded stratified K-fold: every picture is validated exactly once.
    Several labels per picture: iterative stratification's K-fold."""
    from sklearn.model_selection import StratifiedKFold

    if labels.ndim == 2:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        train, val = list(splitter.split(np.zeros(len(labels)), labels))[fold]
        return np.sort(train), np.sort(val)

    smallest = np.bincount(labels).min()
    if smallest < folds:
        raise UserError(f"Received: folds={folds} with a class of only {smallest} pictures; expected at least "
                        f"{folds} pictures per class")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(np.zeros(len(labels)), labels))[fold]
    return np.sort(train), np.sort(val)


def _count(n: int, fraction: float) -> int:
    # At least one validation picture per group when the group has two or more.
    return min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
