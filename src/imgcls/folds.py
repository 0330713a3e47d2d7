"""`imgcls train --folds K`: K models, each validated on its own fold, kept as one K-fold ensemble:
`predict OUT ...` averages their probabilities. The out-of-fold predictions score the recipe on every
training picture once (what a Kaggle user calls the CV score)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .artifact.files import FOLDS, VAL_PREDICTIONS
from .engine.checkpoint import write_json
from .errors import UserError
from .runs import new_run_dir

log = logging.getLogger(__name__)



def train_folds(config: TrainConfig, folds: int) -> tuple[Path, dict]:
    """Train fold 0..K-1 into OUT/fold<k>; write OUT/folds.json (the folds and the out-of-fold metrics)."""
    from .artifact.card import read_card
    from .audit import read_predictions
    from .tasks import get_task
    from .train import train

    if folds < 2:
        raise UserError(f"Received: --folds {folds}; expected an integer >= 2")
    if config.data.val:
        raise UserError("Received: --folds with --val; expected one of them (the folds are the validation)")
    out = new_run_dir(config.out, f"{config.model}-folds{folds}")
    names, paths, labels, probs, card = [], [], [], [], None
    for k in range(folds):
        log.info("fold %d of %d", k + 1, folds)
        fold = dataclasses.replace(config, data=dataclasses.replace(config.data, folds=folds, fold=k),
                                   out=str(out / f"fold{k}"))
        result = train(fold, report=False)
        names.append(f"fold{k}")
        card = read_card(result.run_dir)
        fold_paths, fold_labels, fold_probs = read_predictions(result.run_dir / VAL_PREDICTIONS, card)
        paths += fold_paths
        labels.append(fold_labels)
        probs.append(fold_probs)
    task = get_task(card.task)
    # Each fold decides with its own thresholds (several labels); the out-of-fold figures use the last fold's.
    oof = task.metrics(np.concatenate(labels), np.concatenate(probs), card.classes, card)
    name, value = task.headline(oof)
    summary = {"format": "imgcls-folds/1", "folds": names, "task": card.task,
               "out_of_fold": {k: oof[k] for k in (name, "log_loss", "ece", "mAP", "count") if k in oof}}
    write_json(out / FOLDS, summary)
    log.info("%d folds: out-of-fold %s %.4f, log loss %.4f on %d pictures → %s", folds, name, value,
             oof["log_loss"], oof["count"], out)
    return out, summary
