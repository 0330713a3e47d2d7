"""Issue 16's imbalanced classes: what `--class-weight balanced` and `--sampler balanced` change on a
CIFAR-10 subset with a 10:1 imbalance.

    python bench/imbalance.py [--data ../shared/datasets] [--seeds 0,1,2] [--epochs 10]

The subset (fixed seed 1234; links in bench/out/imbalance/data, the dataset is never modified) keeps
1,000 training pictures of airplane, automobile, bird, cat and deer and 100 of dog, frog, horse, ship
and truck. Each setting trains the default command on it (`imgcls train SUBSET --augment light
--epochs 10 --seed S`, plus the setting's flag); nothing is chosen, so each run is scored on the
balanced 10,000-picture test split: accuracy, the minority classes' mean recall and the majority
classes'. Prints a table, writes bench/out/imbalance.json and appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import mean_std, record  # noqa: E402
from workflows import DEFAULT_DATA, run_imgcls, unpack  # noqa: E402

MAJORITY = ("airplane", "automobile", "bird", "cat", "deer")
MINORITY = ("dog", "frog", "horse", "ship", "truck")
SETTINGS = {"none": [], "--class-weight balanced": ["--class-weight", "balanced"],
            "--sampler balanced": ["--sampler", "balanced"]}


def imbalanced_subset(train: Path, target: Path, keep: dict[str, int]) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    rng = random.Random(1234)
    for label, count in keep.items():
        names = sorted(p.name for p in (train / label).iterdir())
        rng.shuffle(names)
        (target / label).mkdir(parents=True)
        for name in names[:count]:
            (target / label / name).symlink_to((train / label / name).resolve())
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", default="10")
    args = parser.parse_args()
    cifar = unpack(Path(args.data), HERE / "data") / "cifar10"
    out = HERE / "out" / "imbalance"
    subset = imbalanced_subset(cifar / "train", out / "data",
                               {**{c: 1000 for c in MAJORITY}, **{c: 100 for c in MINORITY}})
    results: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for setting, flags in SETTINGS.items():
            run = out / f"{setting.strip('-').replace(' ', '-')}-seed{seed}"
            shutil.rmtree(run, ignore_errors=True)
            run_imgcls(["train", subset, "--augment", "light", "--epochs", args.epochs, "--seed", seed, *flags,
                        "--out", run])
            run_imgcls(["evaluate", run, cifar / "test", "--out", run / "test_metrics.json"])
            test = json.loads((run / "test_metrics.json").read_text())
            recall = {c: test["per_class"][c]["recall"] for c in (*MAJORITY, *MINORITY)}
            row = {"test_accuracy": test["accuracy"],
                   "minority_recall": statistics.mean(recall[c] for c in MINORITY),
                   "majority_recall": statistics.mean(recall[c] for c in MAJORITY),
                   "test_log_loss": test["log_loss"]}
            results[setting].append(row)
            print(f"seed {seed} {setting:24} test accuracy {row['test_accuracy']:.4f}  minority recall "
                  f"{row['minority_recall']:.4f}  majority recall {row['majority_recall']:.4f}", flush=True)
    table = {setting: {key: mean_std([r[key] for r in rows]) for key in rows[0]} for setting, rows in results.items()}
    for setting, row in table.items():
        print(f"{setting:24} {row}")
    print(f"wrote {record('imbalance', table)}; appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
