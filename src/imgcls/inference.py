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

import numpy as np
import torch

from .errors import UserError

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

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)  # NCHW, as exported
        return torch.from_numpy(self.session.run(["logits"], {"input": array})[0])


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
