"""Inference speed (issue 14). Every timing is a whole command in a fresh process, start-up included,
as a user times it:

- predict: `imgcls predict` with --backend torch, onnx and int8 (cold decoded cache, then warm) against
  a plain PIL + PyTorch loop script with the same model (NCHW, batch 64, PIL open/convert/resize) on
  the 10,000 Fashion-MNIST test PNGs (airnet, 28 px) and the 1,001 Dogs vs. Cats test JPEGs
  (EfficientNet-Lite0, 224 px);
- int8: `imgcls export RUN --quantize int8` for simple-cnn, airnet (Fashion-MNIST), ResNet-50
  (CIFAR-10, 32 px) and EfficientNet-Lite0 (Dogs vs. Cats, 224 px): validation accuracy and pictures/s
  of the fp32 and int8 ONNX files, as the command reports them.

The runs are short trainings (a few batches): these measure speed and the int8 accuracy delta, not
accuracy itself.

    python bench/inference.py [--data ../shared/datasets] [--repeats 2] [--only predict,int8]

Prints each row, writes bench/out/inference.json and appends the tables to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from speed import record, summary
from workflows import DEFAULT_DATA, HERE, run_imgcls, unpack

PLAIN = """
import sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
import imgcls
run = imgcls.load_run(sys.argv[1], "cpu")
model = run.model.to(memory_format=torch.contiguous_format)  # what a plain loop gets from torch
size, channels = run.card.preprocess.size, run.card.preprocess.channels
mean = torch.tensor(run.card.preprocess.mean).view(1, -1, 1, 1)
std = torch.tensor(run.card.preprocess.std).view(1, -1, 1, 1)
paths = sorted(Path(sys.argv[2]).iterdir())
mode = "L" if channels == 1 else "RGB"
rows = []
with torch.no_grad():
    for i in range(0, len(paths), 64):
        arrays = [np.asarray(Image.open(p).convert(mode).resize((size, size), Image.BILINEAR)) for p in paths[i:i + 64]]
        batch = torch.from_numpy(np.stack(arrays)).reshape(len(arrays), size, size, channels).permute(0, 3, 1, 2)
        rows.append(model((batch.float() / 255 - mean) / std).softmax(1))
print(len(torch.cat(rows)))
"""


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def train_runs(root: Path, runs: Path) -> dict[str, tuple[Path, Path]]:
    """(run folder, test pictures) per model, trained briefly if not there yet."""
    fm, cifar, dvc = root / "fashion-mnist", root / "cifar10", root / "dogs-vs-cats"
    recipes = {
        "airnet, Fashion-MNIST 28 px": (["train", fm / "train", "--labels", fm / "train.csv", "--val-split", "0.1",
                                         "--epochs", "1", "--train-batches", "60"], fm / "test"),
        "simple-cnn, Fashion-MNIST 28 px": (["train", fm / "train", "--labels", fm / "train.csv", "--val-split", "0.1",
                                             "--model", "simple-cnn", "--epochs", "1", "--train-batches", "150"], fm / "test"),
        "ResNet-50, CIFAR-10 32 px": (["train", cifar / "train", "--model", "resnet50", "--img-size", "32",
                                       "--val-split", "0.1", "--epochs", "1", "--train-batches", "40"], cifar / "test"),
        "EfficientNet-Lite0, Dogs vs. Cats 224 px": (["train", dvc / "train", "--label-pattern", r"^(cat|dog)\.",
                                                      "--model", "efficientnet_lite0", "--pretrained", "--freeze",
                                                      "backbone", "--img-size", "224", "--epochs", "1",
                                                      "--no-feature-cache", "--train-batches", "4", "--val-split",
                                                      "0.2"], dvc / "test1"),
    }
    found = {}
    for i, (name, (argv, test)) in enumerate(recipes.items()):
        out = runs / f"run{i}"
        if not (out / "model.json").is_file():
            run_imgcls([*argv, "--out", out])
        found[name] = (out, test)
    return found


def predict_rows(runs: dict, repeats: int, work: Path) -> dict:
    imgcls = [sys.executable, "-m", "imgcls", "-q"]
    result = {}
    for name in ("airnet, Fashion-MNIST 28 px", "EfficientNet-Lite0, Dogs vs. Cats 224 px"):
        run_dir, test = runs[name]
        pictures = sum(1 for _ in test.iterdir())
        export_s = timed([*imgcls, "export", str(run_dir), "--quantize", "int8", "--cache-dir", str(work / "cache")])
        rates = {"plain PIL + PyTorch loop": [], "torch, cold cache": [], "torch, warm cache": [],
                 "onnx, warm cache": [], "int8, warm cache": []}
        for repeat in range(repeats):
            rates["plain PIL + PyTorch loop"].append(pictures / timed([sys.executable, "-c", PLAIN, str(run_dir), str(test)]))
            cold = work / f"cold{repeat}-{len(result)}"
            rates["torch, cold cache"].append(pictures / timed(
                [*imgcls, "predict", str(run_dir), str(test), "--out", str(work / "p.csv"), "--cache-dir", str(cold)]))
            for backend in ("torch", "onnx", "int8"):
                rates[f"{backend}, warm cache"].append(pictures / timed(
                    [*imgcls, "predict", str(run_dir), str(test), "--backend", backend, "--out", str(work / "p.csv"),
                     "--cache-dir", str(cold)]))
        plain = statistics.median(rates["plain PIL + PyTorch loop"])
        for label, values in rates.items():
            result[f"{name}: {label}"] = {"pictures": pictures, "pictures_per_s": summary(values, 1),
                                          "vs plain loop": round(statistics.median(values) / plain, 2)}
            print(label, json.dumps(result[f"{name}: {label}"]))
        result[f"{name}: export --quantize int8 (once)"] = {"seconds": round(export_s, 1)}
    return result


def int8_rows(runs: dict, work: Path) -> dict:
    result = {}
    for name, (run_dir, _) in runs.items():
        out, _, _ = run_imgcls(["export", run_dir, "--quantize", "int8", "--cache-dir", work / "cache"])
        report = json.loads((run_dir / "model.int8.onnx.json").read_text())["quantization"]
        result[name] = {"validation pictures": report["validation_pictures"],
                        "fp32 accuracy": report["fp32"]["accuracy"], "int8 accuracy": report["int8"]["accuracy"],
                        "delta points": report["accuracy_delta_points"],
                        "fp32 pictures/s": report["fp32"]["pictures_per_s"],
                        "int8 pictures/s": report["int8"]["pictures_per_s"],
                        "int8 speed-up": round(report["int8"]["pictures_per_s"] / report["fp32"]["pictures_per_s"], 2)}
        print(name, json.dumps(result[name]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="predict,int8")
    args = parser.parse_args()
    root = unpack(Path(args.data), HERE / "data")
    runs = train_runs(root, HERE / "out" / "inference-runs")
    with tempfile.TemporaryDirectory() as work:
        if "predict" in args.only:
            record("inference_predict", predict_rows(runs, args.repeats, Path(work)))
        if "int8" in args.only:
            record("inference_int8", int8_rows(runs, Path(work)))


if __name__ == "__main__":
    main()
