"""`imgcls export`: a saved run → ONNX (checked against onnxruntime) or TorchScript, with the
preprocessing contract (input size, channels, mean/std, class names) written beside the model."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .engine.checkpoint import write_json
from .errors import UserError
from .predict import load_run

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def contract(meta: dict, fmt: str) -> dict:
    """What a caller must do before and after the model: the same preprocessing imgcls applies."""
    return {"format": fmt, "input": {"name": "input", "layout": "NCHW", "dtype": "float32",
                                     "channels": meta["channels"], "height": meta["input_size"],
                                     "width": meta["input_size"], "batch": "dynamic"},
            "preprocess": {"squash": "resize to height x width (bilinear)",
                           "crop": "resize the short side to height (bilinear), keep the centre height x width",
                           "pad": "resize the long side to height (bilinear), pad to height x width with grey 114"}[
                meta.get("resize", "squash")] + ", scale to [0, 1], subtract mean, divide by std"
                          + ("; crop uniform borders first (trim_borders)" if meta.get("trim_borders") else ""),
            "mean": meta["mean"], "std": meta["std"], "trim_borders": bool(meta.get("trim_borders")),
            "resize": meta.get("resize", "squash"),
            "output": {"name": "logits", "postprocess": "softmax over the last axis" if meta.get("temperature", 1.0) == 1.0
                       else "divide by temperature, then softmax over the last axis",
                       "temperature": meta.get("temperature", 1.0)},
            "classes": meta["classes"], "architecture": meta["architecture"]}


def export(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, opset: int = 17,
           quantize: str | None = None, cache=None) -> dict:
    """Write the model in `fmt` and its contract (<out>.json); return the path and the check's max abs diff.
    quantize="int8" also writes RUN_DIR/model.int8.onnx (quantize.py) and compares the two."""
    if quantize not in (None, "int8"):
        raise UserError(f"Received: --quantize {quantize}; expected int8")
    if quantize and fmt != "onnx":
        raise UserError(f"Received: --quantize {quantize} with --format {fmt}; expected --format onnx")
    if out is not None and Path(out).name in ("model.json", "model.safetensors"):
        raise UserError(f"Received: --out {out}; expected a new file name, not one of the run's own files")
    if fmt not in FORMATS:
        raise UserError(f"Received: --format {fmt}; expected one of {', '.join(FORMATS)}")
    run = load_run(run_dir, device="cpu")
    meta = run.meta
    out = Path(out) if out is not None else run.run_dir / f"model{SUFFIX[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    example, sample = _pictures(meta, 2), _pictures(meta, 5)  # the check runs another batch size
    with torch.no_grad():
        expected = run.model(sample).numpy()
        if fmt == "onnx":
            # The TorchScript-based exporter needs no onnxscript; dynamic batch on input and output. Its
            # tracer warns about every shape test in Python code, which the export check below covers.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(run.model, (example,), str(out), input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                                  dynamo=False)
            got = _onnxruntime_logits(out, sample.numpy())
        else:
            # TorchScript is deprecated upstream (torch 2.14 warns on every call) but still what many
            # C++ and mobile runtimes load; say it once in the log instead of three warnings.
            log.info("TorchScript is deprecated in PyTorch; prefer --format onnx where you can")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(run.model, example)
                traced.save(str(out))
                got = torch.jit.load(str(out)).eval()(sample).numpy()
    difference = float(np.abs(got - expected).max())
    # Relative to the logits' scale (at least 1): float32 keeps about 7 digits, so a model whose logits
    # reach 1e4 cannot agree to 1e-4 in absolute terms, only in relative ones.
    relative = difference / max(1.0, float(np.abs(expected).max()))
    write_json(Path(str(out) + ".json"), contract(meta, fmt))  # model.onnx.json: never the run's model.json
    log.info("exported %s → %s; largest difference of the logits on a batch of 5: %.2e (relative %.2e)",
             run.run_dir, out, difference, relative)
    if relative > 1e-3:
        raise UserError(f"Received: an exported model whose logits differ by {difference:.2e} from PyTorch's; "
                        "expected at most 1e-3 of their scale (please report this model)")
    result = {"path": str(out), "max_abs_diff": difference, "max_rel_diff": relative}
    if quantize:
        from .quantize import quantize_int8

        result["int8"] = quantize_int8(run, out, run.run_dir / "model.int8.onnx", cache)
    return result


def _pictures(meta: dict, count: int) -> torch.Tensor:
    """`count` random pictures as the model sees them: pixels in [0, 1], normalised with its mean and std."""
    generator = torch.Generator().manual_seed(count)
    pixels = torch.rand(count, meta["channels"], meta["input_size"], meta["input_size"], generator=generator)
    mean, std = torch.tensor(meta["mean"]).view(1, -1, 1, 1), torch.tensor(meta["std"]).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _onnxruntime_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": inputs.astype(np.float32)})[0]
