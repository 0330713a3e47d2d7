"""report.html: one self-contained page (pictures embedded) with everything a run wrote."""
from __future__ import annotations

import json
from pathlib import Path

from ..artifact.card import read_card
from ..artifact.files import DATA, METRICS
from ..engine.metrics import most_confused
from .page import Section, html, write_page

PICTURES = [("curves.png", "Learning curves"), ("confusion.png", "Confusion matrix (validation)"),
            ("pr_curves.png", "Precision-recall per label, with its threshold (validation)"),
            ("per_class.png", "Precision and recall per class (validation)"),
            ("reliability.png", "Reliability: is a 90 % prediction right 90 % of the time?"),
            ("top_losses.png", "Top losses: predicted / true, with where the model looked (Grad-CAM)"),
            ("worst_pictures.png", "Highest-loss pictures (validation): the labels missed (-) and added (+)"),
            ("confused.png", "Most confused pairs: examples, true→predicted (count)"),
            ("ood.png", "Out-of-distribution score (validation): above the threshold, predict answers unknown"),
            ("rejected.png", "Validation pictures furthest from the training pictures: predicted, score"),
            ("coverage.png", "Conformal sets on held-out validation pictures: coverage and set size"),
            ("val_predictions.png", "Validation pictures, wrong ones first: predicted / true (wrong in red)"),
            ("samples.png", "Training pictures"),
            ("suspects.png", "Suspect labels (imgcls audit): given→predicted (P(given))")]


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / METRICS).read_text(encoding="utf-8"))
    data = json.loads((run_dir / DATA).read_text(encoding="utf-8"))
    card = read_card(run_dir)
    summary = _multi_label_summary if card.task == "multi-label" else _single_label_summary
    sections = summary(card, metrics)
    calibration = metrics.get("calibration")
    if calibration:
        sections[0].paragraphs.append(_calibration_text(calibration))
    if metrics.get("open_set"):
        sections[0].paragraphs += _open_set_text(metrics["open_set"])
    counts = [[name, data["counts"]["train"].get(name, 0), data["counts"]["val"].get(name, 0)]
              for name in card.classes]
    sections.append(Section("Data", header=["class", "train", "validation"], rows=counts))
    sections += [Section(title, png=(run_dir / name).read_bytes(), alt=name)
                 for name, title in PICTURES if (run_dir / name).is_file()]
    skipped = data.get("skipped", [])
    if skipped:
        sections.append(Section(f"Skipped files ({len(skipped)})", header=["file", "reason"],
                                rows=[[s["path"], s["reason"]] for s in skipped[:200]]))
    return write_page(run_dir / "report.html", f"imgcls run: {run_dir.name}", sections)


def _opening(card, metrics: dict, what: str) -> str:
    """The start of the first sentence: the model, its input, its classes, the epoch."""
    return html("Model <b>{}</b>, {} px, {} channel(s), {} {}. Best epoch {} of {}: ", card.architecture,
                card.preprocess.size, card.preprocess.channels, card.num_classes, what, metrics["best_epoch"],
                metrics["epochs_run"])


def _calibration_text(calibration: dict) -> str:
    temperature = calibration["temperature"]
    fitted = (html("temperature <b>{:.3f}</b>", temperature) if isinstance(temperature, float)
              else html("one temperature per label, <b>{:.3f}</b> to <b>{:.3f}</b>", min(temperature), max(temperature)))
    scores = ", ".join(f"{name.replace('_', ' ')} {calibration['before'][name]:.4f} → {calibration['after'][name]:.4f}"
                       for name in calibration["before"])
    return html("Calibrated (--calibrate): {}, fitted on the validation pictures; their {}. Evaluate, predict, "
                "export and serve use it.", fitted, scores)


def _open_set_text(open_set: dict) -> list:
    parts = []
    ood = open_set.get("ood")
    if ood:
        seen = ood.get("outliers_rejected")
        parts.append(html("Out-of-distribution score: <b>{}</b> ({}); a picture scoring above {:.1%} of the validation "
                          "pictures is answered unknown: {:.1%} of validation{}.", ood["method"],
                          {"outliers": "chosen on --outliers", "default": "the default",
                           "flag": "--ood"}[ood["chosen_by"]], ood["threshold"], ood["validation_rejected"],
                          f" and {seen:.1%} of --outliers" if seen is not None else ""))
    sets = open_set.get("conformal")
    if sets:
        cross = sets["cross_fitted"]
        parts.append(html("Conformal sets (APS) promising {:.0%} coverage, calibrated on the {} validation pictures; "
                          "calibrated on one half and measured on the other (both ways) they covered <b>{:.1%}</b> "
                          "with <b>{:.2f}</b> classes on average (predict --sets).", sets["coverage"],
                          sets["calibration_pictures"], cross["coverage"], cross["mean_set_size"]))
    return parts


def _multi_label_summary(card, metrics: dict) -> list[Section]:
    """Several labels per picture: mAP, F1 at the thresholds, per class its AP, threshold, P and R, and
    the labels missed or added together most."""
    val = metrics["validation"]
    opening = _opening(card, metrics, "labels (several per picture)") + html(
        "validation mAP <b>{:.4f}</b>, micro-F1 <b>{:.4f}</b>, macro-F1 {:.4f}, exact match {:.4f}, Hamming loss "
        "{:.4f} on {} pictures; training took {:.1f} s. Each label's threshold was chosen on these validation "
        "pictures (best F1), so these figures are optimistic: evaluate on pictures no choice was made on.",
        val["mAP"], val["micro_f1"], val["macro_f1"], val["exact_match"], val["hamming_loss"], val["count"],
        metrics["train_seconds"])
    rows = [[name, v["ap"], threshold, v["precision"], v["recall"], v["f1"], v["support"]]
            for (name, v), threshold in zip(val["per_class"].items(), val["thresholds"])]
    sections = [Section(paragraphs=[opening]),
                Section("Per label (validation)", header=["label", "AP", "threshold", "precision", "recall", "F1",
                                                          "support"], rows=rows)]
    for key, title in (("missed_together", "Labels missed together most (validation)"),
                       ("added_together", "Labels added together most (validation)")):
        if val.get(key):
            sections.append(Section(title, header=["label", "label", "pictures"], rows=val[key]))
    return sections


def _single_label_summary(card, metrics: dict) -> list[Section]:
    val = metrics["validation"]
    opening = _opening(card, metrics, "classes") + html(
        "validation accuracy <b>{:.4f}</b>, log loss <b>{:.4f}</b>, expected calibration error {:.4f} on {} "
        "pictures; training took {:.1f} s.", val["accuracy"], val["log_loss"], val.get("ece", float("nan")),
        val["count"], metrics["train_seconds"])
    per_class = [[name, v["precision"], v["recall"], v["support"]] for name, v in val["per_class"].items()]
    sections = [Section(paragraphs=[opening]),
                Section("Per class (validation)", header=["class", "precision", "recall", "support"], rows=per_class)]
    confused = most_confused(val["confusion"], card.classes)
    if confused:
        sections.append(Section("Most confused (validation)", header=["true", "predicted", "count"],
                                rows=[list(p) for p in confused]))
    return sections
