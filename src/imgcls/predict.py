"""A saved run + pictures → probabilities → a submission file, or metrics on labelled pictures."""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.dataset import DecodedImages, decode_paths, decode_samples, inference_batch_size
from .data.loader import BatchLoader
from .data.store import CacheSettings
from .data.sources import id_sort_key, list_pictures, load_samples
from .engine.checkpoint import final_run_dir, load_weights, read_meta, write_json, write_text
from .engine.device import resolve_device
from .engine.metrics import classification_metrics
from .engine.trainer import predict_proba
from .errors import UserError
from .models.registry import create_model

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
                                    run.meta["input_size"], trim=run.meta.get("trim_borders", False), cache=cache)
    probs, _, _ = predict_proba(run.model, run.loader(decoded, batch_size), tta)
    return probs, decoded.paths, skipped


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
    return probs


def _read_template(path: str | Path) -> tuple[list[str], list[str]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Received: --template {path}; expected an existing CSV file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) < 2:
        raise UserError(f"Received: --template {path}; expected a CSV with an id column and a label column")
    return rows[0][:2], [row[0] for row in rows[1:] if row]


def predict(run_dir: str | Path, images: str | Path, out: str | Path, *, proba: str | None = None,
            template: str | Path | None = None, batch_size: int | None = None, device: str = "auto",
            tta: bool = False, cache: CacheSettings | None = None, backend: str = "torch") -> dict:
    """Write `id,label` per picture (id = file name without extension, numeric ids in numeric order).

    proba=CLASS writes P(CLASS) as the label (Kaggle Dogs vs. Cats); template=CSV follows its ids and
    column names, filling a picture that could not be read with the uniform probability (or the first class).
    tta=True averages each picture's probabilities with its mirror image's.
    """
    run = load_run(run_dir, device, backend)
    if proba is not None and proba not in run.classes:
        raise UserError(f"Received: --proba {proba!r}; expected one of the run's classes: {', '.join(run.classes)}")
    paths, skipped = list_pictures(images)
    probs, kept, failed = predict_images(run, paths, batch_size, tta, cache)
    skipped += failed
    ids = [Path(p).stem for p in kept]
    if len(set(ids)) < len(ids):
        raise UserError(f"Received: IMAGES {images} where several pictures share a file name; expected unique ids")
    if proba is not None:
        values = [f"{v:.6f}" for v in probs[:, run.classes.index(proba)]]
        missing_value = f"{1 / len(run.classes):.6f}"
    else:
        values = [run.classes[i] for i in probs.argmax(1)]
        missing_value = run.classes[0]
    by_id = dict(zip(ids, values))
    header = ["id", "label"]
    order = sorted(by_id, key=id_sort_key)
    if template is not None:
        header, order = _read_template(template)
        absent = [i for i in order if i not in by_id]
        if len(absent) == len(order):
            raise UserError(f"Received: --template {template} whose ids match no picture in {images}; "
                            "expected ids equal to the pictures' file names without extension")
        if absent:
            log.warning("%d template ids have no readable picture; written as %s (first: %s)",
                        len(absent), missing_value, absent[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([i, by_id.get(i, missing_value)] for i in order)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text(out, buffer.getvalue())
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    log.info("wrote %d predictions to %s (%d pictures skipped)", len(order), out, len(skipped))
    return {"written": len(order), "skipped": skipped, "out": str(out)}


def evaluate(run_dir: str | Path, source: str, *, labels: str | None = None, id_col: str = "id",
             label_col: str = "label", ext: str | None = None, label_pattern: str | None = None,
             out: str | Path | None = None, batch_size: int | None = None, device: str = "auto", tta: bool = False,
             cache: CacheSettings | None = None, backend: str = "torch") -> dict:
    """Score a saved run on labelled pictures (same layouts as train); classes are matched by name."""
    run = load_run(run_dir, device, backend)
    samples = load_samples(source, labels, id_col, label_col, ext, label_pattern, classes=run.classes)
    if not len(samples):
        raise UserError(f"Received: {source} with no picture of the run's classes; expected some of "
                        f"{', '.join(run.classes)}")
    decoded, failed = decode_samples(samples, run.meta["channels"], run.meta["input_size"],
                                     trim=run.meta.get("trim_borders", False), cache=cache)
    probs, _, _ = predict_proba(run.model, run.loader(decoded, batch_size), tta)
    metrics = classification_metrics(decoded.labels.numpy(), probs, run.classes)
    metrics["skipped"] = samples.skipped + failed
    if out is not None:
        write_json(out, metrics)
    return metrics
