"""What augmentation, mixup and a 20-trial Optuna study gain over the default recipe (issue 6).

    python bench/tricks.py [--data ../shared/datasets] [--train-size 10000] [--trials 20]

On a Fashion-MNIST subset (the first N training ids, via a subset CSV: the CSV layout makes that a
one-liner) with the full 10,000-picture test set. Prints a table, writes bench/out/tricks.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workflows import DEFAULT_DATA, run_imgcls, unpack  # noqa: E402


def run(args: list) -> tuple[str, float]:
    stdout, _, seconds = run_imgcls(args)
    return stdout, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--trial-epochs", type=int, default=5)
    args = parser.parse_args()
    fm = unpack(Path(args.data), HERE / "data") / "fashion-mnist"
    out = HERE / "out" / "tricks"
    out.mkdir(parents=True, exist_ok=True)
    subset = out / "train_subset.csv"
    with open(fm / "train.csv") as f:
        rows = list(csv.reader(f))
    with open(subset, "w", newline="") as f:
        csv.writer(f).writerows(rows[: args.train_size + 1])
    data = [fm / "train", "--labels", subset, "--val-split", "0.1", "--epochs", args.epochs]
    test = [fm / "test", "--labels", fm / "test_labels.csv"]
    recipes = {
        "default": [],
        "augment light": ["--augment", "light"],
        "augment standard": ["--augment", "standard"],
        "augment light + mixup 0.2": ["--augment", "light", "--mixup", "0.2"],
        "label smoothing 0.1": ["--label-smoothing", "0.1"],
    }
    results = []

    def train_and_test(name: str, extra: list, tune_seconds: float = 0.0) -> None:
        run_dir = out / name.replace(" ", "_").replace("+", "").replace(".", "")
        stdout, seconds = run(["train", *data, *extra, "--out", run_dir])
        metrics_out = run_dir / "test_metrics.json"
        run(["evaluate", run_dir, *test, "--out", metrics_out])
        test_metrics = json.loads(metrics_out.read_text())
        val = json.loads((run_dir / "metrics.json").read_text())["validation"]
        results.append({"recipe": name, "flags": " ".join(map(str, extra)), "val_accuracy": val["accuracy"],
                        "test_accuracy": test_metrics["accuracy"], "test_log_loss": test_metrics["log_loss"],
                        "train_wall_seconds": round(seconds, 1), "tune_wall_seconds": round(tune_seconds, 1)})
        r = results[-1]
        print(f"{name:28} test acc {r['test_accuracy']:.4f}  log loss {r['test_log_loss']:.4f}  "
              f"train {r['train_wall_seconds']:.0f} s  tune {r['tune_wall_seconds']:.0f} s", flush=True)

    for name, extra in recipes.items():
        train_and_test(name, extra)
    study_dir = out / "study"
    stdout, tune_seconds = run(["tune", fm / "train", "--labels", subset, "--val-split", "0.1",
                                "--epochs", args.trial_epochs, "--trials", args.trials, "--out", study_dir])
    best = [line for line in stdout.splitlines() if line.startswith(str(args.trials)) or "best #" in line]
    train_and_test(f"tuned ({args.trials} trials)", ["--config", study_dir / "best.yaml"], tune_seconds)
    report = {"command": " ".join(sys.argv), "train_size": args.train_size, "study": best, "results": results}
    (HERE / "out" / "tricks.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {HERE / 'out' / 'tricks.json'}")


if __name__ == "__main__":
    main()
