"""A saved run + pictures → probabilities → a submission file, or metrics on labelled pictures."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.dataset import DecodedImages, decode_paths, decode_samples
from .data.decode import inference_batch_size
from .data.loader import BatchLoader
from .data.store import CacheSettings
from .data.sources import list_pictures, load_samples
from .engine.calibration import scaled
from .engine.checkpoint import final_run_dir, load_weights, read_meta, write_json
from .engine.device import resolve_device
from .engine.metrics import classification_metrics
from .engine.trainer import predict_proba
from .errors import UserError
from .models.registry import create_model
from .submission import check_proba, write_submission

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    model: torch.nn.Module  # or an inference.OnnxModel: logits = model(normalised pictures) either way
    meta: dict
    device: torch.device
    run_dir: Path  # the folder the weights came from (a finetune folder's final stage)
    backend: str = "torch"

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """The run's temperature (train --calibrate) applied; 1.0 when it has none."""
        return scaled(probs, self.meta.get("temperature", 1.0))

    def loader(self, decoded: DecodedImages, batch_size: int | None = None) -> BatchLoader:
        batch_size = batch_size or inference_batch_size(self.meta["channels"], self.meta["input_size"])
        # channels_last for PyTorch's convolutions; onnxruntime takes the NCHW layout it was exported with.
        return BatchLoader(decoded, batch_size, self.meta["mean"], self.meta["std"], shuffle=False,
                           device=self.device, channels_last=self.backend == "torch")


def load_run(run_dir: str | Path, device: str = "auto", backend: str = "torch") -> LoadedRun:
    """Rebuild the model from model.json and load model.safetensors (never a pickle). A finetune
    folder stands for its final stage. backend="onnx" or "int8" runs the exported ONNX file with
    onnxruntime on the CPU instead (inference.py)."""
    from .inference import OnnxModel, check_backend, onnx_path

    check_backend(backend)
    run_dir = final_run_dir(run_dir)
    meta = read_meta(run_dir)
    if backend != "torch":
        return LoadedRun(OnnxModel(onnx_path(run_dir, backend)), meta, torch.device("cpu"), run_dir, backend)
    model = create_model(meta["architecture"], meta["num_classes"], meta["channels"], meta["input_size"],
                         **meta.get("model_args", {}))
    load_weights(run_dir, model)
    target = resolve_device(device)
    # channels_last: 1.6-2.3x faster inference on this CPU for every registered family
    # (EfficientNet-Lite0 224 px 16 → 27 pictures/s, simple-cnn 6,800 → 15,400; bench/RESULTS.md).
    model = model.to(target, memory_format=torch.channels_last)
    return LoadedRun(model.eval(), meta, target, run_dir)


def predict_images(run: LoadedRun, paths: list[str], batch_size: int | None = None, tta: bool = False,
                   cache: CacheSettings | None = None) -> tuple[np.ndarray, list[str], list[dict]]:
    """Probabilities (N, classes) for the pictures that decode, their paths, and the skipped ones."""
    # A run trained on border-trimmed pictures sees its test pictures trimmed the same way.
    decoded, skipped = decode_paths(paths, np.zeros(len(paths), dtype=np.int64), run.meta["channels"],
                                    run.meta["input_size"], trim=run.meta.get("trim_borders", False), cache=cache,
                                    resize=run.meta.get("resize", "squash"))
    probs, _, _ = predict_proba(run.model, run.loader(decoded, batch_size), tta)
    return run.calibrated(probs), decoded.paths, skipped


def predict_arrays(run: LoadedRun, array: np.ndarray, names: list[str] | None = None,
                   batch_size: int | None = None, tta: bool = False) -> np.ndarray:
    """Probabilities for decoded (N, C, H, W) uint8 pictures, normalised as in training. No loader and
    no thread: `imgcls serve` calls this once per batch of requests, where a millisecond counts."""
    meta = run.meta
    size = batch_size or inference_batch_size(meta["channels"], meta["input_size"])
    mean = torch.tensor(meta["mean"], device=run.device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(meta["std"], device=run.device).view(1, -1, 1, 1) * 255.0
    layout = torch.channels_last if run.backend == "torch" else torch.contiguous_format
    zeros = torch.zeros(size, dtype=torch.long, device=run.device)

    def batches():
        for start in range(0, len(array), size):
            images = torch.from_numpy(np.ascontiguousarray(array[start:start + size])).to(run.device)
            yield ((images.float() - mean) / std).contiguous(memory_format=layout), zeros[:len(images)]

    probs, _, _ = predict_proba(run.model, batches(), tta)
    return run.calibrated(probs)


def ensemble_probabilities(run_dirs: list[str | Path], paths: list[str], *, batch_size: int | None = None,
                           device: str = "auto", tta: bool = False, cache: CacheSettings | None = None,
                           backend: str = "torch") -> tuple[np.ndarray, list[str], list[dict], list[str]]:
    """The mean of several runs' probabilities (each with its own input size, preprocessing and
    temperature) for the pictures every run could read; the runs must have the same classes, in order."""
    total, kept, failed, classes = None, None, {}, None
    for run_dir in run_dirs:
        run = load_run(run_dir, device, backend)
        if classes is None:
            classes = run.classes
        elif run.classes != classes:
            raise UserError(f"Received: runs with different classes ({run_dir}: {', '.join(run.classes[:6])}; "
                            f"{run_dirs[0]}: {', '.join(classes[:6])}); expected an ensemble of runs of the same classes")
        probs, paths_kept, skipped = predict_images(run, paths, batch_size, tta, cache)
        failed.update({item["path"]: item for item in skipped})
        by_path = dict(zip(paths_kept, probs))
        kept = paths_kept if kept is None else [p for p in kept if p in by_path]
        total = {p: by_path[p] for p in kept} if total is None else {p: total[p] + by_path[p] for p in kept}
        del run
    probs = np.stack([total[p] / len(run_dirs) for p in kept]) if kept else np.zeros((0, len(classes)), np.float32)
    return probs, kept, list(failed.values()), classes


def predict(run_dir: str | Path | list, images: str | Path, out: str | Path, *, proba: str | None = None,
            template: str | Path | None = None, batch_size: int | None = None, device: str = "auto",
            tta: bool = False, cache: CacheSettings | None = None, backend: str = "torch",
            label_format: str = "name") -> dict:
    """Write `id,label` per picture (submission.write_submission: numeric ids in numeric order,
    proba=CLASS for P(CLASS), template=CSV for its ids and columns, label_format="index" for class
    positions). tta=True averages each picture's probabilities with its mirror image's.
    backend="onnx"/"int8" runs without torch (inference.py). Several run folders: their mean
    probabilities (ensemble_probabilities)."""
    from .folds import expand_runs

    run_dir = [r for one in (run_dir if isinstance(run_dir, (list, tuple)) else [run_dir]) for r in expand_runs(one)]
    if len(run_dir) > 1:
        paths, skipped = list_pictures(images)
        probs, kept, failed, classes = ensemble_probabilities(run_dir, paths, batch_size=batch_size, device=device,
                                                              tta=tta, cache=cache, backend=backend)
        check_proba(proba, classes)
        log.info("ensemble of %d runs: mean probabilities", len(run_dir))
        return write_submission(probs, kept, skipped + failed, classes, images, out, proba=proba, template=template,
                                label_format=label_format)
    run_dir = run_dir[0]
    if backend != "torch":
        from .inference import predict_onnx

        return predict_onnx(run_dir, images, out, proba=proba, template=template, batch_size=batch_size, tta=tta,
                            cache=cache, backend=backend, label_format=label_format)
    run = load_run(run_dir, device, backend)
    check_proba(proba, run.classes)
    paths, skipped = list_pictures(images)
    probs, kept, failed = predict_images(run, paths, batch_size, tta, cache)
    return write_submission(probs, kept, skipped + failed, run.classes, images, out, proba=proba, template=template,
                            label_format=label_format)


def evaluate(run_dir: str | Path, source: str, *, labels: str | None = None, id_col: str = "id",
             label_col: str = "label", ext: str | None = None, label_pattern: str | None = None,
             out: str | Path | None = None, batch_size: int | None = None, device: str = "auto", tta: bool = False,
             cache: CacheSettings | None = None, backend: str = "torch") -> dict:
    """Score a saved run on labelled pictures (same layouts as train); classes are matched by name."""
    run = load_run(run_dir, device, backend)
    # Matched by the data's own labels (a run with --class-names knows them as given_classes).
    samples = load_samples(source, labels, id_col, label_col, ext, label_pattern,
                           classes=run.meta.get("given_classes") or run.classes)
    if not len(samples):
        raise UserError(f"Received: {source} with no picture of the run's classes; expected some of "
                        f"{', '.join(run.classes)}")
    decoded, failed = decode_samples(samples, run.meta["channels"], run.meta["input_size"],
                                     trim=run.meta.get("trim_borders", False), cache=cache,
                                     resize=run.meta.get("resize", "squash"))
    probs, _, _ = predict_proba(run.model, run.loader(decoded, batch_size), tta)
    probs = run.calibrated(probs)
    metrics = classification_metrics(decoded.labels.numpy(), probs, run.classes)
    metrics["skipped"] = samples.skipped + failed
    if out is not None:
        write_json(out, metrics)
    return metrics
