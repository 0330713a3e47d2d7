"""--calibrate: a temperature fitted on the validation split lowers its log loss, is kept in model.json
and used by evaluate and predict (both backends)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgcls.engine.calibration import fit_temperature, nll, scaled
from imgcls.predict import evaluate, load_run, predict_images
from imgcls.train import train


def test_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 2000)
    logits = rng.normal(0, 1, (2000, 3))
    logits[np.arange(2000), labels] += 1.0  # informative, then sharpened 4x: overconfident
    probs = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)
    temperature = fit_temperature(probs, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)
    assert nll(probs, labels, temperature) < nll(probs, labels, 1.0)
    assert (scaled(probs, temperature).argmax(1) == probs.argmax(1)).all()  # accuracy unchanged


def test_calibration_refuses_to_sharpen_on_a_handful_of_errors():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    confidence = rng.uniform(0.7, 0.9, 300)  # right and underconfident, but for one picture
    probs = np.where(labels[:, None] == np.arange(2), confidence[:, None], 1 - confidence[:, None])
    probs[0] = probs[0, ::-1]  # the one error
    free = fit_temperature(probs, labels, min_errors=0)
    assert free < 0.5  # the log loss alone would sharpen a lot on this set
    assert fit_temperature(probs, labels) == 1.0  # one error is too few to trust that (MIN_ERRORS_TO_SHARPEN)
    softened = fit_temperature(probs ** 3 / (probs ** 3).sum(1, keepdims=True), labels)
    assert softened >= 1.0  # a temperature over 1 (softening) is never refused


def test_calibrated_run_uses_its_temperature_everywhere(class_folder: Path, tmp_path: Path):
    # min errors 0: this easy set has none, and the point here is where a fitted temperature is used
    result = train(source=str(class_folder), model="simple-cnn", img_size=16, channels=3, epochs=4, batch_size=8,
                   lr=0.02, out=str(tmp_path / "run"), calibrate=True, calibrate_min_errors=0)
    run_dir = result.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["after"]["log_loss"] <= calibration["before"]["log_loss"] + 1e-9
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["temperature"] == pytest.approx(calibration["temperature"], abs=1e-6)
    scored = evaluate(run_dir, str(class_folder))  # train + val pictures
    split = [line.split(",") for line in (run_dir / "split.csv").read_text().splitlines()[1:]]
    val = [path for path, _, side in split if side == "val"]
    probs, _, _ = predict_images(load_run(run_dir), val)
    classes = meta["classes"]
    labels = np.array([classes.index(label) for _, label, side in split if side == "val"])
    log_loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1)).mean()
    assert log_loss == pytest.approx(calibration["after"]["log_loss"], abs=1e-4)
    assert scored["count"] == 36
    onnx_probs, _, _ = predict_images(load_run(run_dir, backend="onnx"), val)
    np.testing.assert_allclose(onnx_probs, probs, atol=1e-4)
    assert "temperature" in (run_dir / "report.html").read_text()
