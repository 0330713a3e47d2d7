"""The four walkthroughs end to end through the CLI on ../shared/datasets: accuracy and wall time.

    python bench/workflows.py [--data ../shared/datasets] [--only fashion,cifar-lenet5,...]

Unpacks the datasets into bench/data on first use, runs each workflow's commands in turn (wall
time includes decoding and start-up), prints a table and writes bench/out/workflows.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
IMGCLS = [sys.executable, "-m", "imgcls", "-q"]
DEFAULT_DATA = str(HERE.parent.parent / "shared" / "datasets")


def run_imgcls(args: list, *, quiet: bool = True) -> tuple[str, str, float]:
    """Run one imgcls command in a fresh process: (stdout, stderr, wall seconds); a failure ends the
    benchmark with the command and the tail of its stderr."""
    start = time.perf_counter()
    command = (IMGCLS if quiet else IMGCLS[:-1]) + [str(a) for a in args]
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"imgcls {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip(), done.stderr, seconds


def workflows(d: Path, runs: Path) -> dict[str, list[list[str]]]:
    fm, cifar, dvc = d / "fashion-mnist", d / "cifar10", d / "dogs-vs-cats"
    pattern = r"^(cat|dog)\."
    return {
        "fashion": [
            ["train", str(fm / "train"), "--labels", str(fm / "train.csv"), "--val-split", "0.1",
             "--model", "simple-cnn", "--epochs", "10", "--batch-size", "64", "--out", str(runs / "fashion")],
            ["evaluate", str(runs / "fashion"), str(fm / "test"), "--labels", str(fm / "test_labels.csv"),
             "--out", str(runs / "fashion" / "test_metrics.json")],
            ["predict", str(runs / "fashion"), str(fm / "test"), "--template", str(fm / "sample_submission.csv"),
             "--out", str(runs / "fashion" / "submission.csv")]],
        "fashion-width4": [
            ["train", str(fm / "train"), "--labels", str(fm / "train.csv"), "--val-split", "0.1",
             "--model", "simple-cnn", "--model-arg", "width=4", "--epochs", "10", "--out", str(runs / "fashion4")],
            ["evaluate", str(runs / "fashion4"), str(fm / "test"), "--labels", str(fm / "test_labels.csv"),
             "--out", str(runs / "fashion4" / "test_metrics.json")]],
        "cifar-lenet5": [
            ["train", str(cifar / "train"), "--model", "lenet5", "--epochs", "10", "--out", str(runs / "lenet5")],
            ["evaluate", str(runs / "lenet5"), str(cifar / "test"), "--out", str(runs / "lenet5" / "test_metrics.json")]],
        "cifar-cnn": [
            ["train", str(cifar / "train"), "--model", "cifar-cnn", "--optimizer", "rmsprop", "--lr", "3e-4",
             "--epochs", "5", "--out", str(runs / "cifar-cnn")],
            ["evaluate", str(runs / "cifar-cnn"), str(cifar / "test"), "--out", str(runs / "cifar-cnn" / "test_metrics.json")]],
        "dogs-vs-cats": [
            ["train", str(dvc / "train"), "--label-pattern", pattern, "--split", "balanced", "--model", "cifar-cnn",
             "--img-size", "64", "--epochs", "10", "--out", str(runs / "dogs")],
            ["predict", str(runs / "dogs"), str(dvc / "test1"), "--proba", "dog", "--out", str(runs / "dogs" / "submission.csv")]],
        "resnet50-steps": [
            ["train", str(dvc / "train"), "--label-pattern", pattern, "--split", "balanced", "--model", "resnet50",
             "--batch-size", "8", "--epochs", "1", "--train-batches", "10", "--out", str(runs / "resnet50")]],
    }


ARCHIVES = {"fashion-mnist": "fashion-mnist-csv", "cifar10": "cifar10-jpg", "dogs-vs-cats": "dogs-vs-cats-2k"}


def unpack(shared: Path, target: Path) -> Path:
    """Unpack each dataset archive once into `target`."""
    for folder, archive in ARCHIVES.items():
        if not (target / folder).is_dir():
            with tarfile.open(shared / f"{archive}.tar.gz") as tar:
                tar.extractall(target, filter="data")
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--only", help="comma-separated workflow names")
    args = parser.parse_args()
    data = unpack(Path(args.data), HERE / "data")
    runs = HERE / "out" / "runs"
    if runs.exists():
        import shutil
        shutil.rmtree(runs)
    chosen = workflows(data, runs)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    results = []
    for name, commands in chosen.items():
        steps = []
        for command in commands:
            stdout, _, seconds = run_imgcls(command)
            steps.append({"command": "imgcls " + " ".join(command), "seconds": round(seconds, 1),
                          "stdout": stdout})
        run_dir = Path(commands[0][commands[0].index("--out") + 1])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        test_file = run_dir / "test_metrics.json"
        test = json.loads(test_file.read_text()) if test_file.is_file() else None
        results.append({"workflow": name, "val_accuracy": metrics["validation"]["accuracy"],
                        "val_log_loss": metrics["validation"]["log_loss"],
                        "test_accuracy": test["accuracy"] if test else None,
                        "best_epoch": metrics["best_epoch"], "train_seconds": metrics["train_seconds"],
                        "wall_seconds": round(sum(s["seconds"] for s in steps), 1), "steps": steps})
        r = results[-1]
        print(f"{name:16} val acc {r['val_accuracy']:.4f}  test acc {r['test_accuracy'] or float('nan'):.4f}  "
              f"log loss {r['val_log_loss']:.4f}  train {r['train_seconds']:.0f} s  wall {r['wall_seconds']:.0f} s",
              flush=True)
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "python": platform.python_version()}, "results": results}
    out = HERE / "out" / "workflows.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
