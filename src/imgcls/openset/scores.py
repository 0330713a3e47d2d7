"""Out-of-distribution scores computed inside the model's graph from its pooled features and logits
(higher = less like the training pictures), so that the torch model, its ONNX export and the int8 file
all give them with no extra code:

- msp: 1 - the largest probability (Hendrycks & Gimpel 2017);
- energy: -logsumexp(logits) (Liu et al. 2020); for several labels -Σ softplus(logits) (Wang et al. 2021);
- mahalanobis: the smallest Mahalanobis distance to a class mean under one shared covariance
  (Lee et al. 2018; Ledoit-Wolf shrinkage, so it is defined with fewer pictures than feature dimensions);
- knn: 1 - the cosine similarity to the k-th nearest training picture (Sun et al. 2022).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tasks import get_task

BANK_SIZE = 10_000  # knn: at most this many training pictures are kept (a seeded sample)
NEIGHBOUR = 10  # knn: the k-th nearest is the score


class OodScore(nn.Module):
    """(pooled features, logits) → one score per picture."""

    method = "?"

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MaxProbability(OodScore):
    method = "msp"

    def __init__(self, task: str):
        super().__init__()
        self.task = task

    def forward(self, features, logits):
        return 1 - get_task(self.task).probabilities_torch(logits).amax(1)


class Energy(OodScore):
    method = "energy"

    def __init__(self, task: str):
        super().__init__()
        self.task = task

    def forward(self, features, logits):
        logits = logits.float()
        if self.task == "multi-label":
            return -F.softplus(logits).sum(1)
        return -torch.logsumexp(logits, 1)


class Mahalanobis(OodScore):
    method = "mahalanobis"

    def __init__(self, means: torch.Tensor, precision: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        # Fitted on features divided by `scale` (their RMS) with a variance floor (RIDGE): raw features of
        # 1e-2 whose pictures of a class agree to float32 rounding (an untrained model) gave a precision of
        # 1e18, which turned that rounding into scores torch and onnxruntime disagreed on by 100x.
        self.register_buffer("means", means.float())
        self.register_buffer("precision", precision.float())
        self.register_buffer("scale", scale.float().reshape(()))

    def forward(self, features, logits):
        diff = (features.float() / self.scale).unsqueeze(1) - self.means.unsqueeze(0)  # (N, K, D)
        return ((diff @ self.precision) * diff).sum(-1).amin(1)


RIDGE = 1e-6  # a variance floor, in units of the features' mean square: far below a trained model's spread


def shrunk_precision(centred: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """The inverse of the Ledoit-Wolf covariance (1 - s) XᵀX / n + (s·μ + ridge)·I of centred rows X: inverted
    directly when there are at least as many pictures as features, else through the Woodbury identity
    on the n x n side (a 4,096-feature fusion model on a few hundred pictures: no 4,096² inversion)."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    n, d = centred.shape
    shrinkage = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
    mu = max(float((centred ** 2).sum()) / (n * d), 1e-12)
    a, c = shrinkage * mu + ridge, (1 - shrinkage) / n
    if c == 0:
        return np.eye(d) / a
    if d <= n:
        return np.linalg.inv(a * np.eye(d) + c * (centred.T @ centred))
    inner = np.linalg.inv((a / c) * np.eye(n) + centred @ centred.T)
    return (np.eye(d) - centred.T @ inner @ centred) / a


class NearestNeighbour(OodScore):
    method = "knn"

    def __init__(self, bank: torch.Tensor, k: int = NEIGHBOUR):
        super().__init__()
        self.register_buffer("bank", F.normalize(bank.float(), dim=1))
        self.k = min(k, len(bank))

    def forward(self, features, logits):
        similarity = F.normalize(features.float(), dim=1) @ self.bank.T
        return 1 - similarity.topk(self.k, dim=1).values[:, -1]


def fit_score(method: str, task: str, features: np.ndarray, labels: np.ndarray, seed: int = 0) -> OodScore:
    """The score `method`, fitted on the training pictures' pooled features and labels (class indices,
    or a multi-hot matrix: each label's mean over the pictures that carry it)."""
    if method == "msp":
        return MaxProbability(task)
    if method == "energy":
        return Energy(task)
    features = features.astype(np.float64)
    if method == "mahalanobis":
        hot = labels.astype(bool) if labels.ndim == 2 else np.eye(labels.max() + 1, dtype=bool)[labels]
        present = hot.any(0)
        means = np.stack([features[hot[:, k]].mean(0) for k in np.flatnonzero(present)])
        # Each picture centred on its own class (the first of its labels); a picture with none on the mean.
        own = np.where(hot.any(1), np.argmax(hot[:, present], 1), -1)
        centred = features - np.where(own[:, None] >= 0, means[np.maximum(own, 0)], features.mean(0))
        scale = float(np.sqrt((features ** 2).mean())) or 1.0
        return Mahalanobis(torch.from_numpy(means / scale), torch.from_numpy(shrunk_precision(centred / scale, RIDGE)),
                           torch.tensor(scale))
    if method == "knn":
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(features), min(BANK_SIZE, len(features)), replace=False))
        return NearestNeighbour(torch.from_numpy(features[chosen]))
    raise ValueError(method)


def empty_score(method: str, task: str, tensors: dict[str, torch.Tensor]) -> OodScore:
    """The score `method` with its fitted tensors, as saved (ood.safetensors)."""
    if method in ("msp", "energy"):
        return fit_score(method, task, np.zeros((0, 0)), np.zeros(0))
    if method == "mahalanobis":
        return Mahalanobis(tensors["means"], tensors["precision"], tensors["scale"])
    return NearestNeighbour(tensors["bank"])


class WithOodScore(nn.Module):
    """The classifier and its score in one graph: pictures → (logits, ood score)."""

    def __init__(self, model: nn.Module, score: OodScore):
        super().__init__()
        self.model, self.score = model, score

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        logits = self.model.forward_head(features)
        return logits, self.score(features, logits)
