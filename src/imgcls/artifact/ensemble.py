"""Several saved runs of the same classes answering as one predictor: the mean of their probabilities
(and of their out-of-distribution scores, on the percentile scale, where every member has one).

Members may see a picture differently (EfficientNet-Lite0 at 224 px, Lite2 at 260 px), so one
"picture" of an ensemble is a packed uint8 row: each member's decoded picture, flattened, one after
another (`decode`). A server's micro-batcher stacks and slices these rows as it does single runs'
pictures; `answers` unpacks them for each member.
"""
from __future__ import annotations

from math import prod
from pathlib import Path

import numpy as np

from ..errors import UserError
from .card import ModelCard, read_card
from .files import expand_runs, final_run_dir
from .predictor import Answers, Predictor


def mean_answers(answers: list[Answers], num_classes: int) -> Answers:
    """Several runs' answers for the same pictures, averaged: probabilities, and out-of-distribution
    scores (on the percentile scale, so that they average) where every run has them; no conformal sets
    (each run's are calibrated on its own probabilities, not on their mean)."""
    if not len(answers[0]):
        return Answers(np.zeros((0, num_classes), np.float32))
    probs = np.mean([a.probs for a in answers], axis=0)
    ood = (np.mean([a.ood for a in answers], axis=0).astype(np.float32)
           if all(a.ood is not None for a in answers) else None)
    return Answers(probs, ood)


def check_same_classes(named_cards: list[tuple[str, ModelCard]]) -> None:
    """Refuse, in one line, runs whose classes or task differ from the first's: their mean means nothing."""
    first_name, first = named_cards[0]
    for name, card in named_cards[1:]:
        if (card.classes, card.task) != (first.classes, first.task):
            raise UserError(f"Received: runs with different classes ({name}: {', '.join(card.classes[:6])}; "
                            f"{first_name}: {', '.join(first.classes[:6])}); expected an ensemble of runs of the "
                            "same classes")


def ensemble_card(run_dir: str | Path) -> ModelCard:
    """The card a folder answers with: a run's own, or for an ensemble (a `finetune --models` or
    `train --folds` folder) its first member's, named after all members (classes, task, thresholds
    and the out-of-distribution threshold read the mean)."""
    members = expand_runs(run_dir)
    cards = [read_card(final_run_dir(m, quiet=True)) for m in members]
    check_same_classes([(str(m), card) for m, card in zip(members, cards)])
    if len(cards) == 1:
        return cards[0]
    names = "+".join(dict.fromkeys(card.architecture for card in cards))
    return cards[0].with_(architecture=f"ensemble of {len(cards)}: {names}", conformal=None)


class EnsemblePredictor(Predictor):
    """Runs of the same classes and task, averaged; one packed uint8 row per picture (module docstring)."""

    explainable = False  # Grad-CAM explains one network

    def __init__(self, members: list[Predictor], run_dir: Path):
        self.members, self.run_dir = members, Path(run_dir)
        self.card = ensemble_card(run_dir)
        self.task, self.val_sorted = members[0].task, None
        self.backend = "+".join(dict.fromkeys(m.backend for m in members))
        self.shapes = [(m.card.preprocess.channels, m.card.preprocess.size, m.card.preprocess.size) for m in members]
        self.bounds = np.cumsum([0] + [prod(shape) for shape in self.shapes])

    def decode(self, file, max_pixels: int | None = None) -> np.ndarray:
        """One picture file (or file object) → each member's decoded picture, flattened and packed."""
        parts = []
        for member in self.members:
            if hasattr(file, "seek"):
                file.seek(0)
            parts.append(member.decode(file, max_pixels).reshape(-1))
        return np.concatenate(parts)

    def blank(self, count: int) -> np.ndarray:
        return np.zeros((count, int(self.bounds[-1])), dtype=np.uint8)

    def unpack(self, rows: np.ndarray) -> list[np.ndarray]:
        """Packed rows (N, L) → each member's (N, C, S, S) pictures."""
        return [np.ascontiguousarray(rows[:, start:end]).reshape(len(rows), *shape)
                for start, end, shape in zip(self.bounds[:-1], self.bounds[1:], self.shapes)]

    def answers(self, pictures: np.ndarray, *, tta: bool | int | None = None,
                batch_size: int | None = None) -> Answers:
        # None: each member's own default (the views it chose on validation: predict.load_model)
        return mean_answers([member.answers(part, tta=tta, batch_size=batch_size)
                             for member, part in zip(self.members, self.unpack(np.asarray(pictures)))],
                            self.card.num_classes)
