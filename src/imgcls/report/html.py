"""report.html: one self-contained page (pictures embedded) with everything a run wrote."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..artifact.card import read_card
from ..artifact.files import DATA, METRICS
from ..engine.checkpoint import write_text
from ..engine.metrics import most_confused

PICTURES = [("curves.png", "Learning curves"), ("confusion.png", "Confusion matrix (validation)"),
            ("pr_curves.png", "Precision-recall per label, with its threshold (validation)"),
            ("per_class.png", "Precision and recall per class (validation)"),
            ("reliability.png", "Reliability: is a 90 % prediction right 90 % of the time?"),
            ("top_losses.png", "Top losses: predicted / true, with where the model looked (Grad-CAM)"),
            ("confused.png", "Most confused pairs: examples, true→predicted (count)"),
            ("val_predictions.png", "Validation pictures, wrong ones first: predicted / true (wrong in red)"),
            ("samples.png", "Training pictures"),
            ("suspects.png", "Suspect labels (imgcls audit): given→predicted (P(given))")]


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / METRICS).read_text(encoding="utf-8"))
    data = json.loads((run_dir / DATA).read_text(encoding="utf-8"))
    card = read_card(run_dir)
    if card.task == "multi-label":
        parts = _multi_label_summary(run_dir, card, metrics)
    else:
        parts = _single_label_summary(run_dir, card, metrics)
    counts = [[name, data["counts"]["train"].get(name, 0), data["counts"]["val"].get(name, 0)]
              for name in card.classes]
    parts.append("<h2>Data</h2>" + _table(counts, ["class", "train", "validation"]))
    for name, title in PICTURES:
        path = run_dir / name
        if path.is_file():
            encoded = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f"<h2>{html.escape(title)}</h2><img alt='{name}' src='data:image/png;base64,{encoded}'>")
    skipped = data.get("skipped", [])
    if skipped:
        parts.append(f"<h2>Skipped files ({len(skipped)})</h2>"
                     + _table([[s["path"], s["reason"]] for s in skipped[:200]], ["file", "reason"]))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>imgcls report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    out = run_dir / "report.html"
    write_text(out, page)
    return out


def _heading(run_dir: Path, card, metrics: dict, what: str) -> str:
    """The page's title and the start of its first sentence: the model, its input, its classes, the epoch."""
    return (f"<h1>imgcls run: {html.escape(run_dir.name)}</h1><p>Model <b>{html.escape(card.architecture)}</b>, "
            f"{card.preprocess.size} px, {card.preprocess.channels} channel(s), {card.num_classes} {what}. Best epoch "
            f"{metrics['best_epoch']} of {metrics['epochs_run']}: ")


def _multi_label_summary(run_dir: Path, card, metrics: dict) -> list[str]:
    """Several labels per picture: mAP, F1 at the thresholds, and per class its AP, threshold, P and R."""
    val = metrics["validation"]
    parts = [_heading(run_dir, card, metrics, "labels (several per picture)")
             + f"validation mAP <b>{val['mAP']:.4f}</b>, micro-F1 <b>{val['micro_f1']:.4f}</b>, macro-F1 "
             f"{val['macro_f1']:.4f}, exact match {val['exact_match']:.4f}, Hamming loss {val['hamming_loss']:.4f} on "
             f"{val['count']} pictures; training took {metrics['train_seconds']:.1f} s. Each label's threshold was "
             "chosen on these validation pictures (best F1), so these figures are optimistic: evaluate on pictures "
             "no choice was made on.</p>"]
    rows = [[name, v["ap"], threshold, v["precision"], v["recall"], v["f1"], v["support"]]
            for (name, v), threshold in zip(val["per_class"].items(), val["thresholds"])]
    parts.append("<h2>Per label (validation)</h2>"
                 + _table(rows, ["label", "AP", "threshold", "precision", "recall", "F1", "support"]))
    return parts


def _single_label_summary(run_dir: Path, card, metrics: dict) -> list[str]:
    val = metrics["validation"]
    parts = [_heading(run_dir, card, metrics, "classes")
             + f"validation accuracy <b>{val['accuracy']:.4f}</b>, log loss <b>{val['log_loss']:.4f}</b>, expected "
             f"calibration error {val.get('ece', float('nan')):.4f} on {val['count']} pictures; training took "
             f"{metrics['train_seconds']:.1f} s.</p>"]
    calibration = metrics.get("calibration")
    if calibration:
        parts.append(f"<p>Calibrated (--calibrate): temperature <b>{calibration['temperature']:.3f}</b>, fitted on the "
                     f"validation pictures; their log loss {calibration['before']['log_loss']:.4f} → "
                     f"{calibration['after']['log_loss']:.4f}, ECE {calibration['before']['ece']:.4f} → "
                     f"{calibration['after']['ece']:.4f}. Evaluate, predict, export and serve use it.</p>")
    per_class = [[name, v["precision"], v["recall"], v["support"]] for name, v in val["per_class"].items()]
    parts.append("<h2>Per class (validation)</h2>" + _table(per_class, ["class", "precision", "recall", "support"]))
    confused = most_confused(val["confusion"], card.classes)
    if confused:
        parts.append("<h2>Most confused (validation)</h2>" + _table([list(p) for p in confused],
                                                                     ["true", "predicted", "count"]))
    return parts
