"""`imgcls export`: a saved run → ONNX (checked against onnxruntime) or TorchScript, with the
preprocessing contract (input size, channels, mean/std, class names) written beside the model."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .engine.checkpoint import write_json
from .choices import EXPORT_FORMATS as FORMATS
from .errors import UserError
from .artifact.files import expand_runs
from .artifact.predictor import load_predictor, onnx_file

log = logging.getLogger(__name__)

SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def contract(card, fmt: str) -> dict:
    """What a caller must do before and after the model: the card's preprocessing, and the task's
    reading of the outputs (softmax and argmax; or sigmoid and per-class thresholds)."""
    from .tasks import get_task

    return {"format": fmt, **card.preprocess.contract(), "task": card.task,
            "output": get_task(card.task).contract(card), "classes": card.classes,
            "architecture": card.architecture, **_open_set_contract(card)}


def _open_set_contract(card) -> dict:
    """The second output and its threshold (openset/); the conformal threshold for callers who build sets."""
    parts = {}
    if card.ood:
        parts["ood"] = {"name": "ood_score", "method": card.ood["method"], "threshold": card.ood["raw_threshold"],
                        "decision": "answer 'unknown' where ood_score > threshold"
                                    + (" and no label passes its own threshold" if card.task == "multi-label" else "")}
    if card.conformal:
        parts["conformal"] = {**card.conformal, "rule": "classes by probability, highest first: a class is in the "
                              "set while the probability above it plus u times its own is at most the threshold "
                              "(u uniform in [0, 1) per picture); the top class always"}
    return parts


def ensure_onnx(run_dir: str | Path) -> Path:
    """RUN_DIR/model.onnx, exported now (and checked against PyTorch) unless a current one exists:
    what the onnx and auto backends need, made by their caller (predict, evaluate, serve)."""
    from .artifact.files import final_run_dir
    from .artifact.predictor import is_current, onnx_file

    run_dir = final_run_dir(run_dir)
    path = onnx_file(run_dir, "onnx")
    if not is_current(run_dir, "onnx"):
        log.info("exporting %s to ONNX for the onnx backend (once; kept as %s)", run_dir, path)
        export(run_dir, "onnx", path)
    return path


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
    if len(expand_runs(run_dir)) > 1:
        return _export_ensemble(Path(run_dir), fmt, out, opset, quantize)
    run = load_predictor(run_dir, "torch", device="cpu")
    card = run.card
    out = Path(out) if out is not None else run.run_dir / f"model{SUFFIX[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    example, sample = _pictures(card, 2), _pictures(card, 5)  # the check runs another batch size
    # Written beside `out` and moved over it only once checked: a full disk or a kill mid-export never
    # leaves a truncated model.onnx that looks current to the onnx backend.
    final, out = out, out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix}")
    try:
        difference, relative, score_relative = _write_checked(run, fmt, out, example, sample, opset)
        if score_relative is not None and score_relative > 1e-3:
            raise UserError(f"Received: an exported model whose out-of-distribution score differs by {score_relative:.2e} "
                            "of its scale from PyTorch's; expected at most 1e-3 (please report this model)")
        if relative > 1e-3:
            raise UserError(f"Received: an exported model whose logits differ by {difference:.2e} from PyTorch's; "
                            "expected at most 1e-3 of their scale (please report this model)")
        os.replace(out, final)
    finally:
        out.unlink(missing_ok=True)
    out = final
    write_json(Path(str(out) + ".json"), contract(card, fmt))  # model.onnx.json: never the run's model.json
    log.info("exported %s → %s; largest difference of the logits on a batch of 5: %.2e (relative %.2e)",
             run.run_dir, out, difference, relative)
    result = {"path": str(out), "max_abs_diff": difference, "max_rel_diff": relative,
              **({"ood_score_rel_diff": score_relative} if score_relative is not None else {})}
    if quantize:
        from .quantize import quantize_int8

        result["int8"] = quantize_int8(run, out, onnx_file(run.run_dir, "int8"), cache)
    return result


def _export_ensemble(run_dir: Path, fmt: str, out, opset: int, quantize: str | None) -> dict:
    """Each member exported into its own folder, and RUN_DIR/ensemble.<fmt>.json: the members' files and
    contracts, and how to combine them (a caller outside imgcls needs nothing else)."""
    from .artifact.files import final_run_dir, recorded_member_tta

    if out is not None or quantize:
        raise UserError(f"Received: {'--out' if out is not None else '--quantize'} for the ensemble {run_dir}; expected "
                        "neither (each member is exported into its own folder; quantize one member's folder)")
    members = [final_run_dir(m, quiet=True) for m in expand_runs(run_dir)]
    results = [export(member, fmt, opset=opset) for member in members]
    path = run_dir / f"ensemble{SUFFIX[fmt]}.json"
    write_json(path, {"format": "imgcls-ensemble-contract/2",
                      "combine": "the mean of the members' probabilities, each read as its own contract says and "
                                 "averaged over its tta_views (1: the picture; 2: it and its mirror image, 1/2 each; 6: "
                                 "those 1/4 each, and both shifted one pixel up-left and down-right, reflect-padded, "
                                 "1/8 each)",
                      "members": [{"model": str(Path(r["path"]).relative_to(run_dir)),
                                   "contract": str(Path(r["path"] + ".json").relative_to(run_dir)), "tta_views": views}
                                  for r, views in zip(results, recorded_member_tta(run_dir))]})
    log.info("exported the %d members of %s; their contracts and how to combine them: %s", len(members), run_dir, path)
    return {"path": str(path), "members": [r["path"] for r in results],
            "max_abs_diff": max(r["max_abs_diff"] for r in results),
            "max_rel_diff": max(r["max_rel_diff"] for r in results)}


def _write_checked(run, fmt: str, out: Path, example: torch.Tensor, sample: torch.Tensor,
                   opset: int) -> tuple[float, float, float | None]:
    """Write the model to `out` in `fmt`; the largest difference of its logits from PyTorch's on
    `sample`, absolute and relative to their scale, and the out-of-distribution score's relative one."""
    names = ["logits", "ood_score"] if run.card.ood else ["logits"]  # the score in the same graph (openset/)
    with torch.no_grad():
        expected = _as_list(run.graph(sample))
        if fmt == "onnx":
            # The TorchScript-based exporter needs no onnxscript; dynamic batch on input and output. Its
            # tracer warns about every shape test in Python code, which the export check below covers.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(run.graph, (example,), str(out), input_names=["input"], output_names=names,
                                  dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                                  opset_version=opset, dynamo=False)
            got = _onnxruntime_outputs(out, sample.numpy(), names)
        else:
            # TorchScript is deprecated upstream (torch 2.14 warns on every call) but still what many
            # C++ and mobile runtimes load; say it once in the log instead of three warnings.
            log.info("TorchScript is deprecated in PyTorch; prefer --format onnx where you can")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(run.graph, example)
                traced.save(str(out))
                got = _as_list(torch.jit.load(str(out)).eval()(sample))
    differences = [float(np.abs(g - e).max()) for g, e in zip(got, expected)]
    # Relative to each output's scale (at least 1): float32 keeps about 7 digits, so a model whose logits
    # reach 1e4 cannot agree to 1e-4 in absolute terms, only in relative ones.
    relative = [d / max(1.0, float(np.abs(e).max())) for d, e in zip(differences, expected)]
    return differences[0], relative[0], relative[1] if len(relative) > 1 else None


def _as_list(out) -> list[np.ndarray]:
    return [o.numpy() for o in out] if isinstance(out, tuple) else [out.numpy()]


def _pictures(card, count: int) -> torch.Tensor:
    """`count` random pictures as the model sees them: pixels in [0, 1], normalised by the card."""
    p = card.preprocess
    generator = torch.Generator().manual_seed(count)
    pixels = torch.rand(count, p.channels, p.size, p.size, generator=generator)
    mean, std = torch.tensor(p.mean).view(1, -1, 1, 1), torch.tensor(p.std).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _onnxruntime_outputs(path: Path, inputs: np.ndarray, names: list[str]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(names, {"input": inputs.astype(np.float32)})
