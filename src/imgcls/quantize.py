"""int8 ONNX: onnxruntime's static quantisation of an exported model, calibrated on the run's own
validation pictures, then both files scored on that split (accuracy and pictures/s side by side).

QDQ format, per-channel int8 weights and uint8 activations with reduce_range (7-bit weights): on CPUs
without VNNI (AVX2, this machine kind) full-range u8s8 products can saturate, which onnxruntime's
documentation warns about.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .engine.checkpoint import write_json
from .errors import UserError

log = logging.getLogger(__name__)

CALIBRATION_PICTURES = 256


def validation_batches(run, limit: int | None = None, cache=None) -> tuple[list[np.ndarray], np.ndarray]:
    """The run's validation pictures (split.csv), normalised as in training: NCHW float32 batches and labels."""
    from .data.dataset import decode_paths

    split = run.run_dir / "split.csv"
    if not split.is_file():
        raise UserError(f"Received: RUN_DIR {run.run_dir} without split.csv; expected a run folder of imgcls train "
                        "(its validation pictures calibrate the int8 model)")
    with open(split, newline="", encoding="utf-8") as f:
        import csv
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"][:limit]
    index = {c: i for i, c in enumerate(run.classes)}
    meta = run.meta
    decoded, _ = decode_paths([r["path"] for r in rows], np.array([index[r["label"]] for r in rows]),
                              meta["channels"], meta["input_size"], trim=meta.get("trim_borders", False), cache=cache,
                              resize=meta.get("resize", "squash"))
    if not len(decoded):
        raise UserError(f"Received: RUN_DIR {run.run_dir} whose validation pictures no longer decode; expected "
                        "the pictures it was trained on")
    batches = [images.numpy() for images, _ in run.loader(decoded, 32)]
    return batches, decoded.labels.numpy()


class _Calibration:
    """onnxruntime's CalibrationDataReader: one {"input": batch} at a time."""

    def __init__(self, batches: list[np.ndarray]):
        self.items = iter([{"input": np.ascontiguousarray(b, dtype=np.float32)} for b in batches])

    def get_next(self):
        return next(self.items, None)


def _score(path: Path, batches: list[np.ndarray], labels: np.ndarray) -> dict:
    from .inference import OnnxModel

    model = OnnxModel(path)
    model.logits(batches[0])  # warm-up: the first run allocates
    start = time.perf_counter()
    predicted = np.concatenate([model.logits(b).argmax(1) for b in batches])
    seconds = time.perf_counter() - start
    return {"accuracy": round(float((predicted == labels).mean()), 4),
            "pictures_per_s": round(len(labels) / max(seconds, 1e-9), 1)}


def quantize_int8(run, fp32: Path, out: Path, cache=None) -> dict:
    """Write `out` from `fp32`; return and log both models' validation accuracy and speed."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches, labels = validation_batches(run, cache=cache)
    calibration = validation_batches(run, CALIBRATION_PICTURES, cache)[0]
    prepared = out.with_name(f".{out.name}.prepared.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    finally:
        prepared.unlink(missing_ok=True)
    scores = {"fp32": _score(fp32, batches, labels), "int8": _score(out, batches, labels),
              "validation_pictures": int(len(labels)), "calibration_pictures": int(sum(len(b) for b in calibration))}
    scores["accuracy_delta_points"] = round(100 * (scores["int8"]["accuracy"] - scores["fp32"]["accuracy"]), 2)
    from .export import contract

    write_json(Path(str(out) + ".json"), {**contract(run.meta, "onnx-int8"), "quantization": scores})
    log.info("int8: validation accuracy %.4f (fp32 %.4f), %.0f pictures/s (fp32 %.0f) → %s",
             scores["int8"]["accuracy"], scores["fp32"]["accuracy"], scores["int8"]["pictures_per_s"],
             scores["fp32"]["pictures_per_s"], out)
    return scores
