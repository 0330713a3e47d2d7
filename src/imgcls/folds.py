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
from .engine.metrics import classification_metrics
from .errors import UserError
from .runs import new_run_dir

log = logging.getLogger(__name__)



def train_folds(config: TrainConfig, folds: int) -> tuple[Path, dict]:
    """Train fold 0..K-1 into OUT/fold<k>; write OUT/folds.json (the folds and the out-of-fold metrics)."""
    from .audit import read_predictions
    from .train import train

    if folds < 2:
        raise UserError(f"Received: --folds {folds}; expected an integer >= 2")
    if config.data.val:
        raise UserError("Received: --folds with --val; expected one of them (the folds are the validation)")
    out = new_run_dir(config.out, f"{config.model}-folds{folds}")
    names, paths, labels, probs, classes = [], [], [], [], None
    for k in range(folds):
        log.info("fold %d of %d", k + 1, folds)
        fold = dataclasses.replace(config, data=dataclasses.replace(config.data, folds=folds, fold=k),
                                   out=str(out / f"fold{k}"))
        result = train(fold, report=False)
        names.append(f"fold{k}")
        fold_paths, fold_labels, fold_probs, classes = read_predictions(result.run_dir / VAL_PREDICTIONS)
        paths += fold_paths
        labels.append(fold_labels)
        probs.append(fold_probs)
    oof = classification_metrics(np.concatenate(labels), np.concatenate(probs), classes)
    summary = {"format": "imgcls-folds/1", "folds": names, "out_of_fold": {k: oof[k] for k in ("accuracy", "log_loss",
                                                                                                "ece", "count")}}
    write_json(out / FOLDS, summary)
    log.info("%d folds: out-of-fold accuracy %.4f, log loss %.4f on %d pictures → %s", folds, oof["accuracy"],
             oof["log_loss"], oof["count"], out)
    return out, summary
