"""airbench's parts on a 2-core CPU (issue 26): the whitening first layer, multi-crop TTA, Nesterov with
Lookahead, and frozen BatchNorm scales with 64x bias lr, on 10,000 CIFAR-10 training pictures (1,000 per
class, written by bench/sources.py) and the 10,000 test pictures.

Each variant trains 3 seeds with the default recipe (airnet at the pictures' size, one-cycle AdamW) for
--epochs epochs; its validation accuracy (the seeded 20 % split) is what a choice would be made on. Every
run is then evaluated on the test split without TTA, with --tta (mirror) and --tta 6 (multi-crop): these
test figures are reported, not used to choose anything.

    python bench/airbench_parts.py [--data ../shared/datasets] [--epochs 8] [--variants default,whiten,...]

The SGD variants share one untuned setting (lr 0.05, momentum 0.85, decay 5e-4: cifar10-speed's at a
smaller lr for batch 128); they compare the parts with each other, not SGD with AdamW.

Writes bench/out/airbench_parts.json and appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from speed import record
from workflows import DEFAULT_DATA, HERE, unpack

SGD = ["--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.85", "--weight-decay", "5e-4"]
VARIANTS = {"default": ("default recipe (airnet)", []),
            "whiten": ("+ --model-arg whiten=1", ["--model-arg", "whiten=1"]),
            "sgd": ("SGD lr 0.05, momentum 0.85, decay 5e-4", SGD),
            "sgd-nesterov-lookahead": ("SGD + --nesterov --lookahead 5", [*SGD, "--nesterov", "--lookahead", "5"]),
            "sgd-frozen-bn": ("SGD + --freeze-bn-scale --bias-lr-mult 64",
                              [*SGD, "--freeze-bn-scale", "--bias-lr-mult", "64"])}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    cifar = unpack(Path(args.data), HERE / "data") / "cifar10"
    train = HERE / "out" / "sources" / "folder"
    if not train.is_dir():
        sys.exit("run bench/sources.py first: it writes the 10,000-picture training folder")
    out = HERE / "out" / "airbench_parts"
    imgcls = [sys.executable, "-m", "imgcls", "-q"]
    result = {}
    for key in args.variants.split(","):
        name, flags = VARIANTS[key]
        scores: dict[str, list[float]] = {"val": [], "test": [], "test --tta": [], "test --tta 6": [], "seconds": []}
        for seed in range(args.seeds):
            run = out / f"{key}-seed{seed}"
            start = time.perf_counter()
            subprocess.run([*imgcls, "train", str(train), *flags, "--epochs", str(args.epochs), "--seed", str(seed),
                            "--out", str(run)], check=True)
            scores["seconds"].append(time.perf_counter() - start)
            scores["val"].append(json.loads((run / "metrics.json").read_text())["validation"]["accuracy"])
            for label, tta in (("test", []), ("test --tta", ["--tta"]), ("test --tta 6", ["--tta", "6"])):
                done = subprocess.run([*imgcls, "evaluate", str(run), str(cifar / "test"), *tta], check=True,
                                      capture_output=True, text=True)
                scores[label].append(json.loads(done.stdout.splitlines()[0])["accuracy"])
        result[name] = {**{f"{k} accuracy": mean_std(v) for k, v in scores.items() if k != "seconds"},
                        "training s": mean_std(scores["seconds"]), "seeds": args.seeds}
        print(name, json.dumps(result[name]), flush=True)
    record("airbench_parts", result)


if __name__ == "__main__":
    main()
