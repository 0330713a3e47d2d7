"""The run explains itself: reliability and ECE, most-confused pairs, wrong pictures first, and the
report's interpretation section on a real run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.engine.metrics import most_confused, reliability
from imgcls.report.interpretation import wrong_first
from imgcls.train import train


def test_reliability_bins_and_ece_by_hand():
    labels = np.array([0, 0, 1, 1])
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right)
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.4, 0.6]])
    bins, ece = reliability(labels, probs, bins=10)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 1.0), (2, 0.5)]
    # half the pictures at |1.0 - 0.6| and half at |0.5 - 0.9|
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_most_confused_sorts_off_diagonal_cells():
    matrix = np.array([[5, 3, 0], [1, 7, 0], [0, 4, 2]])
    assert most_confused(matrix, ["a", "b", "c"]) == [("c", "b", 4), ("a", "b", 3), ("b", "a", 1)]


def test_wrong_pictures_come_first():
    labels = np.array([0, 1, 0, 1, 0, 1])
    predicted = np.array([0, 0, 0, 1, 1, 1])
    order = wrong_first(labels, predicted, count=4)
    assert order[:2].tolist() == [1, 4] and len(order) == 4 and set(order[2:]) <= {0, 2, 3, 5}


def test_report_has_the_interpretation(tmp_path: Path):
    result = train(source="digits", model="simple-cnn", img_size=16, epochs=1, out=str(tmp_path / "run"))
    run = result.run_dir
    for name in ("per_class.png", "reliability.png", "top_losses.png", "confused.png", "val_predictions.png"):
        assert Image.open(run / name).size[0] > 200, name
    page = (run / "report.html").read_text()
    for text in ("Most confused (validation)", "expected calibration error", "Top losses", "Reliability",
                 "Precision and recall per class"):
        assert text in page
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["validation"]["ece"] < 1
