"""None of these (issue 25): pretrained EfficientNet-Lite0 trained on Dogs vs. Cats photos, asked about
pictures from outside its classes that nothing was fitted on, and its conformal sets.

    python bench/openset.py [--data ../shared/datasets] [--seeds 0,1,2] [--per-set 300]

Pictures: Dogs vs. Cats cat/dog 0-799 train (imgcls splits them 80/20 into training and validation),
cat/dog 800-999 are the held-out test; outside pictures (never used to fit anything): CIFAR-10's
vehicles (airplane, automobile, ship, truck; photos from another domain, 32 px), Fashion-MNIST's test
pictures (grey product shots) and scikit-learn's digits (8 px), `--per-set` of each.

Per seed and per score method (msp, energy, mahalanobis, knn), one command trains the run
(`imgcls train DVC --label-pattern ... --model efficientnet_lite0 --pretrained --freeze backbone
--img-size 224 --epochs 5 --ood METHOD --coverage C`), and one `imgcls evaluate RUN TEST --outliers SET`
per outside set scores it: AUROC, FPR at 95 % TPR, the share of outside pictures answered unknown, and
in distribution the share answered unknown and the accuracy before and after rejection (default
--reject-rate 0.05). The conformal level C cycles through 0.8, 0.9, 0.95, 0.9 over the four runs of a
seed; sets do not depend on the score, so the second 0.9 run (the same model, the same sets) is not
counted again. Coverage and mean set size are measured on the test pictures.
Prints a table, writes bench/out/openset.json and appends to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import mean_std, record  # noqa: E402
from workflows import DEFAULT_DATA, run_imgcls, unpack  # noqa: E402

METHODS = ("msp", "energy", "mahalanobis", "knn")
COVERAGES = (0.8, 0.9, 0.95, 0.9)  # one per method's run; sets do not depend on the score: one per level counted
PATTERN = r"^(cat|dog)\."


def prepare(data: Path, work: Path, per_set: int) -> dict[str, Path]:
    """The in-distribution training and test folders and the three outside sets (links, not copies)."""
    if (work / "ready").is_file():
        return {name: work / name for name in ("train", "test", "cifar-vehicles", "fashion", "digits")}
    shutil.rmtree(work, ignore_errors=True)
    dvc = data / "dogs-vs-cats" / "train"
    for name, ids in (("train", range(0, 800)), ("test", range(800, 1000))):
        (work / name).mkdir(parents=True)
        for kind in ("cat", "dog"):
            for i in ids:
                (work / name / f"{kind}.{i}.jpg").symlink_to(dvc / f"{kind}.{i}.jpg")
    rng = np.random.default_rng(0)
    vehicles = [p for c in ("airplane", "automobile", "ship", "truck")
                for p in sorted((data / "cifar10" / "test" / c).glob("*.jpg"))]
    fashion = sorted((data / "fashion-mnist" / "test").glob("*.png"))
    for name, files in (("cifar-vehicles", vehicles), ("fashion", fashion)):
        (work / name).mkdir()
        for i in rng.choice(len(files), per_set, replace=False):
            (work / name / f"{files[i].parent.name}-{files[i].name}").symlink_to(files[i])
    from sklearn.datasets import load_digits
    digits = load_digits().images
    (work / "digits").mkdir()
    for i in rng.choice(len(digits), per_set, replace=False):
        Image.fromarray((digits[i] * 255 / 16).astype(np.uint8)).save(work / "digits" / f"d{i}.png")
    (work / "ready").write_text("")
    return prepare(data, work, per_set)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-set", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    data = unpack(Path(args.data), HERE / "data")
    folders = prepare(data, HERE / "out" / "openset" / f"pictures-{args.per_set}", args.per_set)
    outside = ("cifar-vehicles", "fashion", "digits")
    rows: dict[str, list[dict]] = {m: [] for m in METHODS}
    sets: dict[float, list[dict]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for method, coverage in zip(METHODS, COVERAGES):
            run = HERE / "out" / "openset" / f"seed{seed}-{method}"
            shutil.rmtree(run, ignore_errors=True)
            _, _, seconds = run_imgcls(["train", folders["train"], "--label-pattern", PATTERN, "--model",
                                        "efficientnet_lite0", "--pretrained", "--freeze", "backbone", "--img-size", "224",
                                        "--epochs", args.epochs, "--seed", seed, "--ood", method, "--coverage", coverage,
                                        "--out", run])
            row = {"train_seconds": seconds}
            for name in outside:
                out = run / f"evaluate-{name}.json"
                run_imgcls(["evaluate", run, folders["test"], "--label-pattern", PATTERN, "--outliers", folders[name],
                            "--out", out])
                metrics = json.loads(out.read_text())
                ood = metrics["ood"]
                row.update({f"{name} AUROC": ood["auroc"], f"{name} FPR95": ood["fpr95"],
                            f"{name} unknown": ood["outliers_rejected"]})
            row.update({"test accuracy": metrics["accuracy"], "test unknown": ood["rejected"],
                        "accuracy kept": ood["accuracy_after_rejection"]})
            rows[method].append(row)
            if method != METHODS[-1]:  # the last run repeats 0.9 with the same model: not a new measurement
                sets.setdefault(coverage, []).append(metrics["conformal"])
            print(f"seed {seed} {method}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    table = {f"--ood {m}": {k: mean_std([r[k] for r in rs], 1 if k == "train_seconds" else 4) for k in rs[0]}
             for m, rs in rows.items()}
    for coverage, measured in sorted(sets.items()):
        table[f"--coverage {coverage} (APS sets)"] = {
            "runs": str(len(measured)), "test coverage": mean_std([m["coverage"] for m in measured], 4),
            "mean set size": mean_std([m["mean_set_size"] for m in measured], 3)}
    for name, row in table.items():
        print(f"{name:32} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    out = record("openset", table)
    (HERE / "out" / "openset-runs.json").write_text(json.dumps({"command": " ".join(["python", *sys.argv]),
                                                          "runs": rows, "sets": {str(k): v for k, v in sets.items()},
                                                          "table": table}, indent=2))
    print(f"wrote {out}; appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
