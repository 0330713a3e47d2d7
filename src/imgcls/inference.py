"""Inference backends: the run's PyTorch model, or onnxruntime on the run's exported ONNX file (fp32,
or the int8 one `imgcls export --quantize int8` writes). Each takes a batch of normalised float
pictures and returns logits, so predict, evaluate and serve use any of them the same way.

onnxruntime runs small CNNs several times faster than PyTorch's eager CPU kernels here (bench/RESULTS.md);
its model is exported on first use (RUN_DIR/model.onnx, checked against PyTorch) and kept beside the
weights, re-exported when the weights are newer.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "int8")
ONNX_FILE = {"onnx": "model.onnx", "int8": "model.int8.onnx"}


class OnnxModel:
    """An onnxruntime session that looks like an eval-mode module to predict_proba: logits = model(x)."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def eval(self) -> "OnnxModel":
        return self

    def logits(self, array: np.ndarray) -> np.ndarray:
        """Logits for NCHW float32 pictures (normalised), as exported."""
        return self.session.run(["logits"], {"input": np.ascontiguousarray(array, dtype=np.float32)})[0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:  # for predict_proba and serve, which have torch
        import torch

        return torch.from_numpy(self.logits(images.detach().cpu().numpy()))


def onnx_path(run_dir: Path, backend: str) -> Path:
    """The ONNX file of `backend` for a run: exported now if it is missing or older than the weights
    (fp32); the int8 file must come from `imgcls export --quantize int8`."""
    from .engine.checkpoint import WEIGHTS

    path = Path(run_dir) / ONNX_FILE[backend]
    fresh = path.is_file() and path.stat().st_mtime >= (Path(run_dir) / WEIGHTS).stat().st_mtime
    if fresh:
        return path
    if backend == "int8":
        raise UserError(f"Received: --backend int8 for {run_dir} without a current {path.name}; expected "
                        f"`imgcls export {run_dir} --quantize int8` first")
    from .export import export

    log.info("exporting %s to ONNX for the onnx backend (once; kept as %s)", run_dir, path)
    export(run_dir, "onnx", path)
    return path


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"Received: --backend {backend}; expected one of {', '.join(BACKENDS)}")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def onnx_probabilities(model: OnnxModel, meta: dict, paths: list[str], *, batch_size: int | None = None,
                       tta: bool = False, cache=None) -> tuple[np.ndarray, list[str], list[dict]]:
    """Probabilities for the pictures that decode, their paths and the skipped ones, with numpy and
    onnxruntime alone: decoded through the persistent cache (data/store.py) as training does, each
    batch normalised as in training; tta averages with the mirror images' probabilities."""
    from .data.decode import decode_all, inference_batch_size
    from .engine.calibration import scaled
    from .data.store import CacheSettings, DecodedStore

    cache = cache or CacheSettings()
    channels, size, trim = meta["channels"], meta["input_size"], meta.get("trim_borders", False)
    resize = meta.get("resize", "squash")
    if cache.enabled:
        store = DecodedStore(cache.root, channels, size, trim, resize, max_gb=cache.max_gb)
        rows, skipped = store.lookup(paths)
        pictures, ok = store.array(), np.flatnonzero(rows >= 0)
        rows = rows[ok]
    else:
        pictures, ok, skipped = decode_all(paths, channels, size, trim=trim, resize=resize)
        rows = np.arange(len(ok))
    mean = np.asarray(meta["mean"], dtype=np.float32).reshape(1, -1, 1, 1) * 255
    std = np.asarray(meta["std"], dtype=np.float32).reshape(1, -1, 1, 1) * 255
    step = batch_size or inference_batch_size(channels, size)
    out = []
    for start in range(0, len(rows), step):
        batch = pictures[rows[start:start + step]]
        batch = (batch.astype(np.float32) - mean) / std
        log_prob = _log_softmax(model.logits(batch))
        if tta:
            mirrored = _log_softmax(model.logits(np.ascontiguousarray(batch[..., ::-1])))
            log_prob = np.logaddexp(log_prob, mirrored) - np.log(2)
        out.append(np.exp(log_prob).astype(np.float32))
    probs = np.concatenate(out) if out else np.zeros((0, len(meta["classes"])), dtype=np.float32)
    return scaled(probs, meta.get("temperature", 1.0)), [paths[i] for i in ok], skipped


def predict_onnx(run_dir: str | Path, images: str | Path, out: str | Path, *, proba: str | None = None,
                 template: str | Path | None = None, batch_size: int | None = None, tta: bool = False,
                 cache=None, backend: str = "onnx", label_format: str = "name") -> dict:
    """predict.predict with onnxruntime and without torch: `imgcls predict --backend onnx|int8` starts
    in a fraction of a second instead of the ~2 s torch takes to import (bench/RESULTS.md)."""
    from .data.sources import list_pictures
    from .engine.checkpoint import final_run_dir, read_meta
    from .submission import check_proba, write_submission

    check_backend(backend)
    run_dir = final_run_dir(run_dir)
    meta = read_meta(run_dir)
    check_proba(proba, meta["classes"])
    model = OnnxModel(onnx_path(run_dir, backend))
    paths, skipped = list_pictures(images)
    probs, kept, failed = onnx_probabilities(model, meta, paths, batch_size=batch_size, tta=tta, cache=cache)
    return write_submission(probs, kept, skipped + failed, meta["classes"], images, out, proba=proba,
                            template=template, label_format=label_format)
