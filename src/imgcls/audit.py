"""`imgcls audit`: rank training pictures by how implausible their given label is.

Out-of-fold probabilities come from K models trained by the same `train` (each picture is scored by
a model that never saw it; the decoded cache is shared by the folds), or, for the fast variant, from
a finished run's own validation predictions. Ranking is by self-confidence (1 - P(given label)), and
a picture is flagged by confident learning (Northcutt et al. 2021, as cleanlab does: some other class
j has P(j) above class j's mean self-confidence and beats the given class) or by the Dogs vs. Cats
walkthrough's rule (P(given) < 0.3, i.e. a loss above 1.204).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from .config import TrainConfig, config_to_dict
from .data.decode import decode_all
from .artifact.card import read_card
from .artifact.files import VAL_PREDICTIONS, final_run_dir
from .engine.checkpoint import write_csv, write_json
from .errors import UserError

log = logging.getLogger(__name__)

LOSS_RULE_P = 0.3  # the walkthrough's loss threshold 1.204 = -ln(0.3)


def confident_learning_flags(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """True where the confident joint puts a picture off its given class."""
    num_classes = probs.shape[1]
    thresholds = np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(num_classes)])
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -1.0)
    confident = masked.argmax(1)
    return above.any(1) & (confident != labels)


def rank_suspects(paths: list[str], labels: np.ndarray, probs: np.ndarray, card) -> list[dict]:
    """Every picture, most implausible first: path, given, predicted, p_given, score, rank, flagged (and
    for several labels per picture, the labels that look missing or spurious)."""
    if card.task == "multi-label":
        return _rank_label_sets(paths, labels, probs, card)
    classes = card.classes
    p_given = probs[np.arange(len(labels)), labels]
    flagged = confident_learning_flags(labels, probs) | (p_given < LOSS_RULE_P)
    order = np.argsort(p_given, kind="stable")
    return [{"rank": rank + 1, "path": paths[i], "given": classes[labels[i]],
             "predicted": classes[int(probs[i].argmax())], "p_given": round(float(p_given[i]), 6),
             "score": round(float(1 - p_given[i]), 6), "flagged": int(flagged[i])}
            for rank, i in enumerate(order)]


def _rank_label_sets(paths: list[str], labels: np.ndarray, probs: np.ndarray, card) -> list[dict]:
    """Several labels per picture: a label looks missing where the picture lacks it but the out-of-fold
    probability is at least 1 - 0.3, spurious where it has it but the probability is under 0.3 (the
    single-label rule per label, as cleanlab's multi-label ranking scores each class one-vs-rest).
    Pictures are ranked by how implausible their whole label set is (1 - p_given, tasks/multi_label)."""
    from .tasks import get_task

    task, classes, sep = get_task(card.task), card.classes, card.label_sep
    given = labels > 0
    missing, spurious = ~given & (probs >= 1 - LOSS_RULE_P), given & (probs < LOSS_RULE_P)
    p_given = np.array([task.p_given(row, label) for row, label in zip(probs, labels)])
    decided = task.decide(probs, card)
    order = np.argsort(p_given, kind="stable")
    return [{"rank": rank + 1, "path": paths[i], "given": task.label_text(labels[i], classes, sep),
             "predicted": task.label_text(decided[i], classes, sep), "p_given": round(float(p_given[i]), 6),
             "score": round(float(1 - p_given[i]), 6), "flagged": int(missing[i].any() or spurious[i].any()),
             "missing": sep.join(classes[k] for k in np.flatnonzero(missing[i])),
             "spurious": sep.join(classes[k] for k in np.flatnonzero(spurious[i]))}
            for rank, i in enumerate(order)]


def read_predictions(path: Path, card) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A val_predictions.csv written by train: paths, labels (as the run's task encodes them), probabilities."""
    from .tasks import get_task

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels = get_task(card.task).encode([r["label"] for r in rows], card.classes, card.label_sep)
    probs = np.array([[float(r[f"p_{c}"]) for c in card.classes] for r in rows], dtype=np.float64)
    return [r["path"] for r in rows], labels, probs


def write_suspects(out: Path, suspects: list[dict], shown: int = 32) -> None:
    """suspects.csv (every picture, ranked) and suspects.png (the top ones, titled given→predicted)."""
    from .report.plots import plot_grid, save_figure

    out.mkdir(parents=True, exist_ok=True)
    columns = list(suspects[0]) if suspects else ["rank", "path"]
    write_csv(out / "suspects.csv", columns, ([s[c] for c in columns] for s in suspects))
    top = suspects[:shown]
    array, index, _ = decode_all([s["path"] for s in top], 3, 96, "decoding suspects")
    titles = [f"{top[i]['given']}→{top[i]['predicted']} ({top[i]['p_given']:.2f})" for i in index]
    save_figure(plot_grid(array, titles, ["red"] * len(titles), ncols=8), out / "suspects.png")
    flagged = sum(s["flagged"] for s in suspects)
    write_json(out / "suspects.json", {"pictures": len(suspects), "flagged": flagged,
                                       "rule": f"confident learning or P(given) < {LOSS_RULE_P}"})
    _page(out, suspects, flagged)
    log.info("%d of %d pictures flagged as suspect labels → %s", flagged, len(suspects), out / "suspects.csv")


def _page(out: Path, suspects: list[dict], flagged: int, rows: int = 100) -> Path:
    """audit.html: the count, the contact sheet and the top rows, in one self-contained page."""
    from .report.page import Section, write_page

    table = [[s["rank"], s["path"], s["given"], s["predicted"], f"{s['p_given']:.3f}", s["flagged"]]
             for s in suspects[:rows]]
    return write_page(out / "audit.html", "imgcls audit", [
        Section(paragraphs=[f"{flagged} of {len(suspects)} pictures flagged (confident learning, or P(given) < "
                            f"{LOSS_RULE_P})."]),
        Section("Top suspects: given→predicted (P(given))", png=(out / "suspects.png").read_bytes(), alt="suspects.png"),
        Section(f"Top {rows}", header=["rank", "path", "given", "predicted", "P(given)", "flagged"], rows=table)])


def audit_run(run_dir: str | Path) -> list[dict]:
    """The fast variant: rank a finished run's validation pictures by its own predictions."""
    from .report.html import write_report

    run_dir = final_run_dir(run_dir)
    predictions = run_dir / VAL_PREDICTIONS
    if not predictions.is_file():
        raise UserError(f"Received: RUN_DIR {run_dir} without val_predictions.csv; expected a finished imgcls run")
    card = read_card(run_dir)
    paths, labels, probs = read_predictions(predictions, card)
    suspects = rank_suspects(paths, labels, probs, card)
    write_suspects(run_dir, suspects)
    write_report(run_dir)
    return suspects


def audit(base: TrainConfig, folds: int = 5, out: str | Path = "runs/audit") -> list[dict]:
    """Train `folds` models on K-fold splits; rank every picture by its out-of-fold probability.

    Run again into the same `out` with the same settings, it resumes: finished folds are reused and an
    interrupted one is finished with --resume. With other settings it starts afresh, moving the
    previous folds aside (OUT/folds-previous, numbered), never deleting them.
    """
    from .runs import next_free
    from .train import train

    if folds < 2:
        raise UserError(f"Received: folds={folds}; expected an integer >= 2")
    out = Path(out)
    # Through JSON, so that it compares equal to what audit.json reads back (tuples become lists).
    settings = json.loads(json.dumps({"format": "imgcls-audit/1", "folds": folds,
                                      "config": {**config_to_dict(base), "out": None}}))
    marker = out / "audit.json"
    previous = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    if (out / "folds").is_dir() and previous != settings:
        aside = next_free(out / "folds-previous")
        (out / "folds").rename(aside)
        log.info("audit: starting afresh in %s (%s); the previous folds are now in %s", out,
                 "its settings differ from this run's" if previous else "it holds folds of an unknown audit", aside)
    elif previous == settings:
        log.info("audit: resuming the audit in %s (same settings): finished folds are reused", out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, settings)
    all_paths, all_labels, all_probs, card = [], [], [], None
    for k in range(folds):
        fold_dir = out / "folds" / f"fold{k}"
        if (fold_dir / VAL_PREDICTIONS).is_file():
            log.info("audit: fold %d of %d already finished in %s", k + 1, folds, fold_dir)
            predictions = fold_dir / VAL_PREDICTIONS
        else:
            log.info("audit: fold %d of %d", k + 1, folds)
            if (fold_dir / "config.yaml").is_file():  # interrupted: finish it, each epoch once
                result = train(resume=fold_dir, report=False)  # a fold needs its predictions, not plots
            else:
                config = dataclasses.replace(base, data=dataclasses.replace(base.data, folds=folds, fold=k),
                                             out=str(fold_dir))
                result = train(config, report=False)
            predictions = result.run_dir / VAL_PREDICTIONS
        card = read_card(predictions.parent)
        paths, labels, probs = read_predictions(predictions, card)
        all_paths += paths
        all_labels.append(labels)
        all_probs.append(probs)
    suspects = rank_suspects(all_paths, np.concatenate(all_labels), np.concatenate(all_probs), card)
    write_suspects(out, suspects)
    return suspects
