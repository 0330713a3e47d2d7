"""Probabilities per picture → `id,label` rows (a competition's submission file). No torch: the onnx
backend writes submissions without loading it (inference.predict_onnx)."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from .data.archives import picture_ids
from .data.sources import id_sort_key
from .engine.checkpoint import write_csv
from .choices import LABEL_FORMATS
from .errors import UserError

log = logging.getLogger(__name__)


def check_proba(proba: str | bool | None, classes: list[str]) -> None:
    if isinstance(proba, str) and proba not in classes:
        raise UserError(f"Received: --proba {proba!r}; expected one of the run's classes: {', '.join(classes)}")


def _read_template(path: str | Path) -> tuple[list[str], list[str]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Received: --template {path}; expected an existing CSV file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) < 2:
        raise UserError(f"Received: --template {path}; expected a CSV with an id column and a label column")
    return rows[0][:2], [row[0] for row in rows[1:] if row]




def write_submission(answers, kept: list[str], skipped: list[dict], card, images: str | Path,
                     out: str | Path, *, proba: str | bool | None = None, template: str | Path | None = None,
                     label_format: str = "name", sets: bool = False, unknown: bool = False) -> dict:
    """Write `id,label` per picture (id = file name without extension, numeric ids in numeric order),
    the label as the run's task decides it (card: the run's model card): one class, or for a
    multi-label run `id,tags` with the labels above their thresholds, space-separated (Planet's format).

    proba=CLASS writes P(CLASS) as the label (Kaggle Dogs vs. Cats), proba=True a column of probabilities
    per class; template=CSV follows its ids and column names, filling a picture that could not be read
    with the uniform probability (or the first class; no label).
    label_format="index" writes the class's position (0..K-1) instead of its name: what Fashion-MNIST's
    submission wants from a run whose classes got names (--class-names).

    `answers` (artifact.predictor.Answers): unknown=True with the run's out-of-distribution score labels
    a picture above its threshold "unknown", and proba=True then adds its ood_score column; sets=True
    adds a `set` column, the conformal set's classes.
    """
    from .openset.decide import UNKNOWN
    from .openset.decide import unknown as rejected
    from .tasks import get_task

    probs = answers.probs
    classes, task = card.classes, get_task(card.task)
    if label_format not in LABEL_FORMATS:
        raise UserError(f"Received: --label-format {label_format}; expected one of {', '.join(LABEL_FORMATS)}")
    ids = picture_ids(kept)
    if len(set(ids)) < len(ids):
        raise UserError(f"Received: IMAGES {images} where several pictures share a file name; expected unique ids")
    uniform = f"{1 / len(classes) if task.name == 'single-label' else 0.5:.6f}"  # nothing known about the picture
    extra = []  # further columns: (name, value per picture, value for a picture that could not be read)
    if unknown and proba is True and answers.ood is not None:
        extra.append(("ood_score", [f"{v:.6f}" for v in answers.ood], ""))
    if sets:
        extra.append(("set", [" ".join(c for c, chosen in zip(classes, row) if chosen) for row in answers.sets], ""))
    if proba is True:
        values = [[f"{v:.6f}" for v in row] for row in probs]
        missing_value = [uniform] * len(classes)
    elif proba is not None:
        values = [[f"{v:.6f}"] for v in probs[:, classes.index(proba)]]
        missing_value = [uniform]
    else:
        shown = [str(i) for i in range(len(classes))] if label_format == "index" else classes
        decided = task.decide(probs, card)
        if decided.ndim == 2:  # several labels per picture
            values = [[" ".join(shown[k] for k in np.flatnonzero(row))] for row in decided]
            missing_value = [""]
        else:
            values = [[shown[i]] for i in decided]
            missing_value = [shown[0]]
        if unknown:
            values = [[UNKNOWN] if out else value for value, out in zip(values, rejected(card, decided, answers.ood))]
    values = [[*value, *(column[i] for _, column, _ in extra)] for i, value in enumerate(values)]
    missing_value = [*missing_value, *(missing for _, _, missing in extra)]
    by_id = dict(zip(ids, values))
    header = ["id", *classes] if proba is True else ["id", "tags" if card.task == "multi-label" and proba is None
                                                      else "label"]
    header += [name for name, _, _ in extra]
    order = sorted(by_id, key=id_sort_key)
    if template is not None:
        template_header, order = _read_template(template)
        header = ([template_header[0], *classes] if proba is True else template_header) + [name for name, _, _ in extra]
        absent = [i for i in order if i not in by_id]
        if len(absent) == len(order):
            raise UserError(f"Received: --template {template} whose ids match no picture in {images}; "
                            "expected ids equal to the pictures' file names without extension")
        if absent:
            log.warning("%d template ids have no readable picture; written as %s (first: %s)",
                        len(absent), " ".join(missing_value) or "no label", absent[0])
    write_csv(out, header, ([i, *by_id.get(i, missing_value)] for i in order))
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    log.info("wrote %d predictions to %s (%d pictures skipped)", len(order), out, len(skipped))
    return {"written": len(order), "skipped": skipped, "out": str(out)}
