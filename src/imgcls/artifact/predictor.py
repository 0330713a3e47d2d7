"""Predictors: a saved model that turns decoded uint8 pictures into logits, one class per backend
(PyTorch, onnxruntime fp32, onnxruntime int8), chosen in one place (load_predictor). Every command
that uses a saved model (predict, evaluate, serve, explain, export's check, ensembles) asks one.

onnxruntime runs small CNNs several times faster than PyTorch's eager CPU kernels here
(bench/RESULTS.md), and needs no torch import (about 2 s): --backend auto picks it where onnxruntime
is installed and a current export exists. Exporting is the caller's job (export.ensure_onnx), never
loading's.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import stopping
from ..data.decode import inference_batch_size
from ..errors import UserError, first_line
from ..tasks import get_task
from . import BACKENDS
from .card import ModelCard, read_card
from .files import OOD, ONNX, WEIGHTS, final_run_dir

log = logging.getLogger(__name__)


@dataclass
class Answers:
    """What a saved model says about pictures: the task's probabilities (N, K), calibrated as the card
    says; where the run has them, each picture's out-of-distribution score (its place among validation's,
    0..1) and its conformal set (N, K booleans)."""

    probs: np.ndarray
    ood: np.ndarray | None = None
    sets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, rows) -> "Answers":
        return Answers(self.probs[rows], None if self.ood is None else self.ood[rows],
                       None if self.sets is None else self.sets[rows])


class Predictor:
    """A saved model: uint8 (N, C, S, S) pictures → logits (and the raw out-of-distribution score where
    the run has one), then the task's probabilities."""

    backend = "?"
    default_tta = 1  # views when a caller asks none (what the run chose on validation: predict.load_model)
    explainable = True

    def __init__(self, card: ModelCard, run_dir: Path):
        self.card, self.run_dir = card, run_dir
        self.task = get_task(card.task)
        self.val_sorted = None  # the validation pictures' raw scores, sorted: the score's scale
        if card.ood:
            from safetensors.numpy import load_file

            if not (run_dir / OOD).is_file():
                raise UserError(f"Received: RUN_DIR {run_dir} whose model.json names an out-of-distribution score "
                                f"but has no {OOD}; expected the whole run folder as train wrote it")
            self.val_sorted = load_file(str(run_dir / OOD))["val_sorted"]

    @property
    def classes(self) -> list[str]:
        return self.card.classes

    def outputs(self, pictures: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, raw out-of-distribution scores or None) of one batch."""
        raise NotImplementedError

    def decode(self, file, max_pixels: int | None = None) -> np.ndarray:
        """One picture file (or file object) → what `answers` takes for it (a server's uploads)."""
        return self.card.preprocess.decode(file, max_pixels)

    def blank(self, count: int) -> np.ndarray:
        """`count` black pictures as `answers` takes them (warm-up and batch timing)."""
        p = self.card.preprocess
        return np.zeros((count, p.channels, p.size, p.size), dtype=np.uint8)

    def logits(self, pictures: np.ndarray) -> np.ndarray:
        return self.outputs(pictures)[0]

    def answers(self, pictures: np.ndarray, *, tta: bool | int | None = None, batch_size: int | None = None) -> Answers:
        """Probabilities, scores and sets of every picture; tta averages each picture's probabilities (and
        raw score) over views of it (tta_views: True or 2, with its mirror image; 6, airbench's multi-crop:
        also both shifted by one pixel each way; None: default_tta)."""
        from ..openset import conformal
        from ..openset.scale import percentile

        tta = self.default_tta if tta is None else tta
        p = self.card.preprocess
        step = batch_size or inference_batch_size(p.channels, p.size)
        probs, raw = [], []
        for start in range(0, len(pictures), step):
            stopping.check()
            batch = np.ascontiguousarray(pictures[start:start + step])
            batch_probs, score = 0.0, None
            for view, weight in tta_views(batch, tta):
                logits, view_score = self.outputs(np.ascontiguousarray(view))
                batch_probs = batch_probs + weight * self.task.probabilities(logits)
                if view_score is not None:
                    score = weight * view_score if score is None else score + weight * view_score
            probs.append(batch_probs)
            raw.append(score)
        probs = np.concatenate(probs) if probs else np.zeros((0, self.card.num_classes), dtype=np.float32)
        probs = self.task.calibrated(probs, self.card)
        ood = (percentile(np.concatenate(raw) if raw else np.zeros(0, np.float32), self.val_sorted)
               if self.val_sorted is not None else None)
        sets = (conformal.prediction_sets(probs, conformal.uniform_draws(pictures), self.card.conformal["threshold"])
                if self.card.conformal and len(pictures) else None)
        return Answers(probs, ood, sets)

    def probabilities(self, pictures: np.ndarray, *, tta: bool | int | None = None,
                      batch_size: int | None = None) -> np.ndarray:
        """The task's probabilities (N, K), calibrated as the card says."""
        return self.answers(pictures, tta=tta, batch_size=batch_size).probs


class TorchPredictor(Predictor):
    """The run's PyTorch model, rebuilt from the card and its safetensors weights (never a pickle)."""

    backend = "torch"

    def __init__(self, card: ModelCard, run_dir: Path, device: str = "auto"):
        import torch

        from ..engine.checkpoint import load_weights
        from ..engine.device import resolve_device
        from ..models.registry import create_model

        super().__init__(card, run_dir)
        p = card.preprocess
        model = create_model(card.architecture, card.num_classes, p.channels, p.size, **card.model_args)
        load_weights(run_dir, model)
        self.model = model  # the classifier itself (explain and export's check use it)
        if card.ood:  # the score in the same graph: pictures → (logits, score)
            from safetensors.torch import load_file

            from ..openset.fit import with_score
            model = with_score(model, card, load_file(str(run_dir / OOD)))
        self.device = resolve_device(device)
        # channels_last: 1.6-2.3x faster inference on this CPU for every registered family
        # (EfficientNet-Lite0 224 px 16 → 27 pictures/s, simple-cnn 6,800 → 15,400; bench/RESULTS.md).
        self.graph = model.to(self.device, memory_format=torch.channels_last).eval()

    def inputs(self, pictures: np.ndarray):
        """uint8 pictures → the model's normalised input tensor, channels_last on its device."""
        import torch

        images = torch.from_numpy(np.ascontiguousarray(pictures))
        return self.card.preprocess.normalise_torch(images, self.device).contiguous(memory_format=torch.channels_last)

    def outputs(self, pictures: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.inference_mode():
            out = self.graph(self.inputs(pictures))
        if isinstance(out, tuple):
            return out[0].float().cpu().numpy(), out[1].float().cpu().numpy()
        return out.float().cpu().numpy(), None


class OnnxPredictor(Predictor):
    """An onnxruntime session on the run's exported ONNX file (fp32, or int8 from export --quantize)."""

    def __init__(self, card: ModelCard, run_dir: Path, backend: str = "onnx", threads: int | None = None,
                 path: Path | None = None):
        import onnxruntime

        super().__init__(card, run_dir)
        self.backend = backend
        self.path = path or onnx_file(run_dir, backend)
        if path is None and not is_current(run_dir, backend):
            raise UserError(f"Received: --backend {backend} for {run_dir} without a current {self.path.name}; "
                            f"expected `imgcls export {run_dir}{' --quantize int8' if backend == 'int8' else ''}` first")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own types: a damaged or foreign file
            raise UserError(f"Received: {self.path} that onnxruntime cannot load ({first_line(error)}); expected an ONNX "
                            f"file written by imgcls export (write it again: imgcls export {run_dir})") from None

    def outputs(self, pictures: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        names = ["logits", "ood_score"] if self.card.ood else ["logits"]
        out = self.session.run(names, {"input": self.card.preprocess.normalise(pictures)})
        return out[0], (out[1] if self.card.ood else None)


TTA_VIEWS = (1, 2, 6)  # --tta N: the picture; with its mirror image; and both shifted by a pixel each way


def check_tta(tta: bool | int) -> int:
    """The number of views `tta` asks for (False: 1, True: 2); any other number than TTA_VIEWS is refused."""
    views = 2 if tta is True else int(tta or 1)
    if views not in TTA_VIEWS:
        raise UserError(f"Received: --tta {views}; expected one of {', '.join(map(str, TTA_VIEWS))} views")
    return views


def tta_views(batch: np.ndarray, tta: bool | int) -> list[tuple[np.ndarray, float]]:
    """(view, weight) pairs of a batch of (N, C, H, W) pictures whose weighted mean is the prediction.
    2 views: the picture and its mirror image. 6 (airbench's multi-crop TTA): those, weighted 1/4 each,
    and the pair shifted one pixel up-left and one down-right (reflect-padded), 1/8 each."""
    views = check_tta(tta)
    if views == 1:
        return [(batch, 1.0)]
    mirrored = [(batch, 0.5), (batch[..., ::-1], 0.5)]
    if views == 2:
        return mirrored
    height, width = batch.shape[-2:]
    padded = np.pad(batch, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    shifted = [padded[..., :height, :width], padded[..., 2:height + 2, 2:width + 2]]
    return ([(view, weight / 2) for view, weight in mirrored]
            + [(v, 0.125) for picture in shifted for v in (picture, picture[..., ::-1])])


def onnx_file(run_dir: Path, backend: str = "onnx") -> Path:
    return Path(run_dir) / ONNX[backend]


def is_current(run_dir: Path, backend: str = "onnx") -> bool:
    """The backend's ONNX file exists and is not older than the weights (or the fitted score)."""
    path = onnx_file(run_dir, backend)
    sources = [Path(run_dir) / name for name in (WEIGHTS, OOD) if (Path(run_dir) / name).is_file()]
    return path.is_file() and all(path.stat().st_mtime >= source.stat().st_mtime for source in sources)


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"Received: --backend {backend}; expected one of {', '.join(BACKENDS)}")


def resolve_backend(run_dir: Path, backend: str) -> str:
    """What `auto` means for this run now: onnx where onnxruntime is installed and a current export
    exists (export.ensure_onnx makes one), else torch."""
    check_backend(backend)
    if backend != "auto":
        return backend
    return "onnx" if onnxruntime_installed() and is_current(run_dir, "onnx") else "torch"


def load_predictor(run_dir: str | Path, backend: str = "auto", device: str = "auto") -> Predictor:
    """The one place a backend is chosen. A finetune folder stands for its final stage."""
    run_dir = final_run_dir(run_dir)
    card = read_card(run_dir)
    backend = resolve_backend(run_dir, backend)
    if backend == "torch":
        return TorchPredictor(card, run_dir, device)
    if not onnxruntime_installed():
        raise UserError(f"Received: --backend {backend} without onnxruntime; expected `pip install imgcls[export]`")
    return OnnxPredictor(card, run_dir, backend)
