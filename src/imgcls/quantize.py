"""int8 ONNX: onnxruntime's static quantisation of an exported model, calibrated on the run's own
validation pictures, then both files scored on that split (accuracy and pictures/s side by side).

QDQ format, per-channel int8 weights and uint8 activations with reduce_range (7-bit weights): on CPUs
without VNNI (AVX2, this machine kind) full-range u8s8 products can saturate, which onnxruntime's
documentation warns about.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from .engine.checkpoint import write_json
from .errors import UserError

log = logging.getLogger(__name__)

CALIBRATION_PICTURES = 256


def validation_pictures(run, limit: int | None = None, cache=None) -> tuple[np.ndarray, np.ndarray]:
    """The run's validation pictures (split.csv) decoded as the card says (uint8) and their labels."""
    from .artifact.files import SPLIT
    from .data.store import decode_rows

    split = run.run_dir / SPLIT
    if not split.is_file():
        raise UserError(f"Received: RUN_DIR {run.run_dir} without {SPLIT}; expected a run folder of imgcls train "
                        "(its validation pictures calibrate the int8 model)")
    with open(split, newline="", encoding="utf-8") as f:
        import csv
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"][:limit]
    p = run.card.preprocess
    pictures, ok, _ = decode_rows([r["path"] for r in rows], p.channels, p.size, trim=p.trim, cache=cache,
                                  resize=p.resize, crop=p.crop)
    if not len(pictures):
        raise UserError(f"Received: RUN_DIR {run.run_dir} whose validation pictures no longer decode; expected "
                        "the pictures it was trained on")
    labels = run.task.encode([rows[i]["label"] for i in ok], run.classes, run.card.label_sep)
    return pictures[np.arange(len(pictures))], labels


class _Calibration:
    """onnxruntime's CalibrationDataReader: one {"input": batch} at a time."""

    def __init__(self, batches: list[np.ndarray]):
        self.items = iter([{"input": np.ascontiguousarray(b, dtype=np.float32)} for b in batches])

    def get_next(self):
        return next(self.items, None)


def _score(run, path: Path, pictures: np.ndarray, labels: np.ndarray) -> dict:
    """The task's headline figure (accuracy; micro-F1 for several labels) and pictures/s of one ONNX file."""
    from .artifact.predictor import OnnxPredictor

    model = OnnxPredictor(run.card, run.run_dir, path=path)
    model.logits(pictures[:32])  # warm-up: the first run allocates
    start = time.perf_counter()
    probs = model.probabilities(pictures, batch_size=32)
    seconds = time.perf_counter() - start
    name, value = run.task.headline(run.task.metrics(labels, probs, run.classes, run.card))
    return {name: round(value, 4), "pictures_per_s": round(len(labels) / max(seconds, 1e-9), 1)}


def quantize_int8(run, fp32: Path, out: Path, cache=None) -> dict:
    """Write `out` from `fp32`; return and log both models' validation accuracy and speed."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pictures, labels = validation_pictures(run, cache=cache)
    normalise = run.card.preprocess.normalise
    calibration = [normalise(pictures[i:i + 32]) for i in range(0, min(len(pictures), CALIBRATION_PICTURES), 32)]
    prepared = out.with_name(f".{out.name}.prepared.onnx")
    # Quantised beside `out`, moved over it once scored: a kill or a full disk never leaves a truncated
    # model.int8.onnx that looks current to the int8 backend.
    written = out.with_name(f".{out.name}.{os.getpid()}.tmp.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(written), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        scores = {"fp32": _score(run, fp32, pictures, labels), "int8": _score(run, written, pictures, labels),
                  "validation_pictures": int(len(labels)),
                  "calibration_pictures": int(sum(len(b) for b in calibration))}
        os.replace(written, out)
    finally:
        prepared.unlink(missing_ok=True)
        written.unlink(missing_ok=True)
    name = next(iter(scores["fp32"]))
    scores["score"] = name
    scores[f"{name}_delta_points"] = round(100 * (scores["int8"][name] - scores["fp32"][name]), 2)
    from .export import contract

    write_json(Path(str(out) + ".json"), {**contract(run.card, "onnx-int8"), "quantization": scores})
    log.info("int8: validation %s %.4f (fp32 %.4f), %.0f pictures/s (fp32 %.0f) → %s", name,
             scores["int8"][name], scores["fp32"][name], scores["int8"]["pictures_per_s"],
             scores["fp32"]["pictures_per_s"], out)
    return scores
