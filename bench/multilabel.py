"""Several labels per picture on real photos (issue 24): 2x2 mosaics of CIFAR-10 pictures, each
labelled with the set of classes its four tiles show; training mosaics from training pictures only,
test mosaics from the test split.

    python bench/multilabel.py [--data ../shared/datasets] [--seeds 0,1,2] [--train 2000] [--test 1000]

Per seed (a new draw of mosaics and a new training seed), on the same mosaics:
- imgcls from scratch: `imgcls train MOSAICS --labels train.csv --label-col tags --multi-label` (the
  default recipe: airnet, 6 epochs);
- imgcls finetune of the offline pretrained EfficientNet-Lite0: `imgcls finetune ... --multi-label
  --model efficientnet_lite0 --img-size 128` (6 head epochs, then 3 with the last 2 blocks);
- the baseline a user writes by hand: Lite0's frozen ImageNet features (the same network at 128 px,
  pooled) and
  one scikit-learn logistic regression per class, each predicting at probability 0.5.
imgcls chooses its thresholds on its own validation split of the training mosaics; every method is
scored once on the test mosaics: macro mAP, micro-F1, exact match, and wall time (training command, or
feature extraction + fitting for the baseline). Prints a table, writes bench/out/multilabel.json and
appends it to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import mean_std, record  # noqa: E402
from workflows import DEFAULT_DATA, run_imgcls, unpack  # noqa: E402

SIZE = 64  # a mosaic of four 32x32 CIFAR-10 pictures
INPUT = 128  # what the pretrained network sees (upscaled: ImageNet features are weak on 32 px objects)


def cifar_files(root: Path) -> tuple[list[Path], list[str]]:
    files = sorted(root.rglob("*.jpg"))
    return files, [f.parent.name for f in files]


def write_mosaics(files: list[Path], labels: list[str], count: int, folder: Path, csv_path: Path,
                  rng: np.random.Generator) -> np.ndarray:
    """`count` 2x2 mosaics of randomly drawn pictures (so one to four distinct classes each), and the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        chosen = rng.choice(len(files), 4, replace=False)
        mosaic = Image.new("RGB", (SIZE, SIZE))
        for k, j in enumerate(chosen):
            mosaic.paste(Image.open(files[j]).convert("RGB").resize((32, 32)), (32 * (k % 2), 32 * (k // 2)))
        mosaic.save(folder / f"m{i}.png")
        rows.append((f"m{i}", " ".join(sorted({labels[j] for j in chosen}))))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "tags"])
        writer.writerows(rows)
    return np.array([r[1] for r in rows])


def scores(targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, f1_score

    predicted = probs >= thresholds[None, :]
    return {"mAP": float(np.mean([average_precision_score(targets[:, k], probs[:, k])
                                  for k in range(targets.shape[1])])),
            "micro_f1": float(f1_score(targets, predicted, average="micro", zero_division=0)),
            "exact_match": float((predicted == targets.astype(bool)).all(1).mean())}


def multi_hot(tags: np.ndarray, classes: list[str]) -> np.ndarray:
    index = {c: k for k, c in enumerate(classes)}
    hot = np.zeros((len(tags), len(classes)), dtype=np.uint8)
    for i, cell in enumerate(tags):
        for t in cell.split():
            hot[i, index[t]] = 1
    return hot


def baseline(train_dir: Path, train_tags: np.ndarray, test_dir: Path, test_tags: np.ndarray,
             classes: list[str], seed: int) -> dict:
    """Frozen Lite0 ImageNet features (pooled) + one LogisticRegression per class, threshold 0.5: what a
    user writes with torchvision-style code and scikit-learn."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from imgcls.models.registry import create_model, get_spec

    start = time.perf_counter()
    model = create_model("efficientnet_lite0", 10, 3, INPUT)
    model.load_pretrained()
    model.eval()
    spec = get_spec("efficientnet_lite0")  # its normalisation, as imgcls applies it
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)

    def features(folder: Path, count: int) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start_i in range(0, count, 64):
                batch = np.stack([np.asarray(Image.open(folder / f"m{i}.png").convert("RGB").resize(
                    (INPUT, INPUT), Image.Resampling.BILINEAR)) for i in range(start_i, min(count, start_i + 64))])
                x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - mean) / std
                out.append(model.forward_features(x).flatten(1).numpy())  # pooled already
        return np.concatenate(out)

    x_train, x_test = features(train_dir, len(train_tags)), features(test_dir, len(test_tags))
    y_train, y_test = multi_hot(train_tags, classes), multi_hot(test_tags, classes)
    probs = np.zeros((len(x_test), len(classes)))
    for k in range(len(classes)):
        fitted = LogisticRegression(max_iter=2000, random_state=seed).fit(x_train, y_train[:, k])
        probs[:, k] = fitted.predict_proba(x_test)[:, 1]
    seconds = time.perf_counter() - start
    return {**scores(y_test, probs, np.full(len(classes), 0.5)), "seconds": seconds}


def imgcls_run(kind: str, train_dir: Path, train_csv: Path, test_dir: Path, test_csv: Path, out: Path,
               seed: int) -> dict:
    common = [train_dir, "--labels", train_csv, "--label-col", "tags", "--multi-label", "--seed", seed]
    if kind == "scratch":
        command = ["train", *common, "--out", out]
    else:
        command = ["finetune", *common, "--model", "efficientnet_lite0", "--img-size", INPUT, "--resize", "squash",
                   "--stage1-epochs", 6, "--stage2-epochs", 3, "--unfreeze-last", 2, "--out", out]
    _, _, seconds = run_imgcls(command)
    metrics_out = out / "test.json"
    run_imgcls(["evaluate", out, test_dir, "--labels", test_csv, "--label-col", "tags", "--out", metrics_out])
    metrics = json.loads(metrics_out.read_text())
    return {"mAP": metrics["mAP"], "micro_f1": metrics["micro_f1"], "exact_match": metrics["exact_match"],
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    cifar = unpack(Path(args.data), HERE / "data") / "cifar10"
    train_files, train_labels = cifar_files(cifar / "train")
    test_files, test_labels = cifar_files(cifar / "test")
    classes = sorted(set(train_labels))
    methods = ("imgcls scratch", "imgcls finetune Lite0", "baseline: frozen Lite0 + logistic regression")
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in (int(s) for s in args.seeds.split(",")):
        work = HERE / "out" / "multilabel" / f"seed{seed}"
        shutil.rmtree(work, ignore_errors=True)  # a fresh draw every run
        rng = np.random.default_rng(seed)
        train_tags = write_mosaics(train_files, train_labels, args.train, work / "train", work / "train.csv", rng)
        test_tags = write_mosaics(test_files, test_labels, args.test, work / "test", work / "test.csv", rng)
        for method, kind in zip(methods, ("scratch", "finetune", "baseline")):
            if kind == "baseline":
                row = baseline(work / "train", train_tags, work / "test", test_tags, classes, seed)
            else:
                row = imgcls_run(kind, work / "train", work / "train.csv", work / "test", work / "test.csv",
                                 work / kind, seed)
            results[method].append(row)
            print(f"seed {seed} {method}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    table = {m: {k: mean_std([r[k] for r in rows], 1 if k == "seconds" else 4) for k in rows[0]}
             for m, rows in results.items()}
    print(f"labels per test mosaic (last seed): {statistics.mean(len(t.split()) for t in test_tags):.2f}")
    for method, row in table.items():
        print(f"{method:48} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    out = record("multilabel", table)
    (HERE / "out" / "multilabel-runs.json").write_text(json.dumps({"command": " ".join(["python", *sys.argv]),
                                                             "runs": results, "table": table}, indent=2))
    print(f"wrote {out}; appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
