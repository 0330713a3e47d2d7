"""Inference speed of an exported ONNX model in onnxruntime against PyTorch (issue 7).

    python bench/export_speed.py [--repeats 5]

For each model, a tiny run is trained (weights do not matter for speed), exported with
`imgcls export`, and the same batches are timed in PyTorch and onnxruntime, alternating, in one
process. Prints a table, writes bench/out/export_speed.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

import imgcls
from imgcls.export import export

HERE = Path(__file__).resolve().parent
CASES = [("simple-cnn", 28, 1, 256), ("cifar-cnn", 32, 3, 256), ("resnet50", 224, 3, 8), ("resnet50", 224, 3, 32)]


def tiny_folder(root: Path, channels: int) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_folder(Path(tmp) / "data", 3)
        for model, size, channels, batch in CASES:
            run_dir = Path(tmp) / f"{model}-{size}"
            if not run_dir.exists():
                imgcls.train(source=str(data), model=model, img_size=size, channels=channels, epochs=1,
                             batch_size=4, out=str(run_dir))
            result = export(run_dir, "onnx")
            net = imgcls.load_run(run_dir, "cpu").model
            session = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
            x = np.random.default_rng(1).normal(size=(batch, channels, size, size)).astype(np.float32)
            timings = {"pytorch": [], "onnxruntime": []}
            with torch.inference_mode():
                net(torch.from_numpy(x))
                session.run(None, {"input": x})  # warm-up
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    net(torch.from_numpy(x))
                    timings["pytorch"].append(batch / (time.perf_counter() - start))
                    start = time.perf_counter()
                    session.run(None, {"input": x})
                    timings["onnxruntime"].append(batch / (time.perf_counter() - start))
            row = {"model": model, "img_size": size, "batch": batch, "max_abs_diff": result["max_abs_diff"],
                   **{f"{k}_img_s": round(statistics.median(v), 1) for k, v in timings.items()},
                   **{f"{k}_all": [round(t, 1) for t in v] for k, v in timings.items()}}
            rows.append(row)
            print(f"{model:11} {size:4d} px batch {batch:4d}: PyTorch {row['pytorch_img_s']:9.1f} img/s  "
                  f"onnxruntime {row['onnxruntime_img_s']:9.1f} img/s  "
                  f"({row['onnxruntime_img_s'] / row['pytorch_img_s']:.2f}x)  max diff {row['max_abs_diff']:.1e}",
                  flush=True)
    out = HERE / "out" / "export_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                               "platform": platform.platform(), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
