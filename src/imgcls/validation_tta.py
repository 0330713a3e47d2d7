"""The test-time augmentation a finetune keeps, chosen on its validation pictures.

Flip TTA (each picture's probabilities averaged with its mirror image's) helped some Dogs vs. Cats
runs and hurt others, with the same recipe: finetune's stages train on cached features of unflipped
pictures, so the head never sees a mirror image, and on a few hundred validation pictures with one to
three errors, whether averaging two views helps the log loss is a property of the run, not of the
recipe (bench/RESULTS.md). So each finetune (and each member of a `finetune --models` ensemble) scores
its own validation pictures both ways and records the winner; predict, evaluate and serve use it unless
--tta is given.
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


def _record(task, card, labels: np.ndarray, by_view: dict[str, np.ndarray]) -> dict:
    """Validation log loss and headline score of each view's probabilities, and the views chosen: 2
    where the mirror image lowered the log loss, else 1."""
    record: dict = {"chosen_on": "validation", "pictures": len(labels), "log_loss": {}}
    for key, probabilities in by_view.items():
        metrics = task.metrics(labels, probabilities, card.classes, card)
        name, value = task.headline(metrics)
        record["log_loss"][key] = round(float(metrics["log_loss"]), 6)
        record.setdefault(name, {})[key] = round(float(value), 6)
    record["views"] = 2 if record["log_loss"]["2"] < record["log_loss"]["1"] else 1
    return record


def choose_tta(run_dirs: list[Path], names: list[str] | None = None, cache=None) -> dict | None:
    """Score the validation pictures (shared by `run_dirs`) without and with the mirror image, and
    choose. One run: {"views": 2 where the mirror lowered its log loss, else 1, "log_loss": {"1", "2",
    "mirror"}, headline score, pictures}. Several (an ensemble, `names` naming them): each member chooses
    on its own log loss, as members differ (Dogs vs. Cats: Lite0 worse with the mirror image in every
    seed, Lite2 better): "members" holds each one's record, "member_views" its choice, and "log_loss"
    the mean probabilities' with no mirror, with it for all, and with each member's choice ("chosen").
    None where a run kept no validation predictions."""
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
    per_run = [{key: np.stack([v.probs[key][p] for p in shared]) for key in ("1", "2", "mirror")} for v in views]
    if len(views) == 1:
        record = _record(task, card, labels, per_run[0])
        ll = record["log_loss"]
        log.info("TTA chosen on %d validation pictures: %d view(s) (log loss %.5f alone, %.5f with the mirror image)",
                 len(shared), record["views"], ll["1"], ll["2"])
        return record
    names = names or [Path(r).name for r in run_dirs]
    members = {name: _record(task, card, labels, probs) for name, probs in zip(names, per_run)}
    record = _record(task, card, labels, {key: np.mean([probs[key] for probs in per_run], axis=0)
                                          for key in ("1", "2", "mirror")})
    # No one choice for all: each member's own, below (a "views" here is how ensembles made before
    # 2026-12-08 recorded one choice for every member, which files.recorded_member_tta still reads).
    del record["views"]
    record["member_views"] = {name: one["views"] for name, one in members.items()}
    chosen = np.mean([probs[str(members[name]["views"])] for name, probs in zip(names, per_run)], axis=0)
    record["log_loss"]["chosen"] = round(float(task.metrics(labels, chosen, card.classes, card)["log_loss"]), 6)
    record["members"] = members
    log.info("TTA chosen per member on %d validation pictures: %s; ensemble log loss %.5f (%.5f with no mirror "
             "image, %.5f with it for all)", len(shared),
             ", ".join(f"{m} {v} view(s)" for m, v in record["member_views"].items()), record["log_loss"]["chosen"],
             record["log_loss"]["1"], record["log_loss"]["2"])
    return record
