"""The test-time augmentation a finetune keeps, chosen on its validation pictures.

Flip TTA (each picture's probabilities averaged with its mirror image's) helped some Dogs vs. Cats
runs and hurt others, with the same recipe: finetune's stages train on cached features of unflipped
pictures, so the head never sees a mirror image, and on a few hundred validation pictures with one to
three errors, whether averaging two views helps the log loss is a property of the run, not of the
recipe (bench/RESULTS.md). So each finetune (or `finetune --models` ensemble) scores its own validation
pictures both ways and records the winner; predict, evaluate and serve use it unless --tta is given.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .artifact.files import VAL_PREDICTIONS, final_run_dir

log = logging.getLogger(__name__)


def mirrored_probabilities(run, pictures) -> np.ndarray:
    """The task's uncalibrated probabilities of every picture's mirror image."""
    from .data.decode import inference_batch_size

    p = run.card.preprocess
    step = inference_batch_size(p.channels, p.size)
    out = [run.task.probabilities(run.logits(np.ascontiguousarray(pictures[start:start + step][..., ::-1])))
           for start in range(0, len(pictures), step)]
    return np.concatenate(out) if out else np.zeros((0, run.card.num_classes), np.float32)


class MemberViews(NamedTuple):
    """One run's validation pictures: path → label, and under each view's key ("1": the picture alone,
    "2": averaged with its mirror image, "mirror": the mirror image alone, a diagnosis of whether the
    mirror is the weaker view) path → calibrated probabilities."""

    labels: dict
    probs: dict[str, dict]
    card: object


def _member_views(run_dir: Path, cache) -> MemberViews | None:
    """The views of one run's validation pictures; None without validation predictions."""
    from .artifact.card import read_card
    from .audit import read_predictions
    from .data.store import decode_rows
    from .predict import load_run

    final = final_run_dir(run_dir, quiet=True)
    if not (final / VAL_PREDICTIONS).is_file():
        return None
    card = read_card(final)
    paths, labels, raw = read_predictions(final / VAL_PREDICTIONS, card)
    p = card.preprocess
    pictures, ok, _ = decode_rows(paths, p.channels, p.size, "validation pictures, mirrored", trim=p.trim,
                                  cache=cache, resize=p.resize, crop=p.crop)
    run = load_run(final, backend="torch")  # no ONNX file written as a side effect of training
    mirrored = mirrored_probabilities(run, pictures)
    kept = [paths[i] for i in ok]
    by_view = {"1": raw[ok], "2": (raw[ok] + mirrored) / 2, "mirror": mirrored}
    return MemberViews(dict(zip(kept, labels[ok])),
                       {key: dict(zip(kept, run.task.calibrated(probs, card))) for key, probs in by_view.items()}, card)


def choose_tta(run_dirs: list[Path], names: list[str] | None = None, cache=None) -> dict | None:
    """Score the validation pictures (shared by `run_dirs`, whose probabilities are averaged) without and
    with the mirror image; {"views": 2 where that lowered the log loss, else 1, "log_loss": {...},
    headline score, pictures, and each member's log losses}; None where a run kept no validation
    predictions."""
    from .tasks import get_task

    views = [_member_views(Path(r), cache) for r in run_dirs]
    if any(v is None for v in views):
        return None
    card = views[0].card
    task = get_task(card.task)
    shared = [p for p in views[0].labels if all(p in v.labels for v in views[1:])]
    if not shared:
        return None
    labels = np.stack([views[0].labels[p] for p in shared])
    record: dict = {"chosen_on": "validation", "pictures": len(shared), "log_loss": {}, "members": {}}
    for key in ("1", "2", "mirror"):
        probs = np.mean([np.stack([v.probs[key][p] for p in shared]) for v in views], axis=0)
        metrics = task.metrics(labels, probs, card.classes, card)
        name, value = task.headline(metrics)
        record["log_loss"][key] = round(float(metrics["log_loss"]), 6)
        record.setdefault(name, {})[key] = round(float(value), 6)
        for member, v in zip(names or [], views):
            one = task.metrics(labels, np.stack([v.probs[key][p] for p in shared]), card.classes, card)
            record["members"].setdefault(member, {})[key] = round(float(one["log_loss"]), 6)
    if not names:
        del record["members"]
    ll = record["log_loss"]
    record["views"] = 2 if ll["2"] < ll["1"] else 1
    log.info("TTA chosen on %d validation pictures: %d view(s) (log loss %.5f alone, %.5f with the mirror image)",
             len(shared), record["views"], ll["1"], ll["2"])
    return record
