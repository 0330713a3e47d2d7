"""Issue 16's Dogs vs. Cats target under the protocol: log loss on labelled pictures that no choice was
made on, for one EfficientNet-Lite0 and for an ensemble of the seeds' models, with and without the
validation-fitted temperature (--calibrate) and test-time augmentation.

    python bench/dvc_heldout.py [--data ../shared/datasets] [--seeds 0,1,2] [--heldout 0.2] [-- FINETUNE FLAGS]

dogs-vs-cats/train is split once (fixed seed 1234, balanced by class) into a held-out part and the
pictures imgcls sees; bench/out/dvc-heldout/data links to them (the dataset is never modified). Each
seed runs the documented finetune command on the seen part: its own balanced 80/20 split, whose
validation pictures choose only the best epoch and fit the temperature. The held-out pictures are
predicted once per setting (`imgcls predict ... --proba dog`) and scored here by log loss, with the
probabilities clipped to [1e-15, 1 - 1e-15] as Kaggle did. Without calibration = the same run with the
temperature taken out of a copy of its model.json. Wall times are of whole commands (start-up, decoding,
caching, reports); the matmul rate is measured in the same run. Prints a table, writes
bench/out/dvc_heldout.json and appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import matmul_gflops, mean_std, record  # noqa: E402
from workflows import DEFAULT_DATA, run_imgcls, unpack  # noqa: E402

PATTERN = r"^(cat|dog)\."
FINETUNE = ["--label-pattern", PATTERN, "--split", "balanced", "--clean", "--model", "efficientnet_lite0",
            "--batch-size", "32", "--stage1-epochs", "8", "--stage2-epochs", "4", "--unfreeze-last", "2",
            "--drop-implausible", "8", "--calibrate"]


def hold_out(train: Path, target: Path, fraction: float) -> tuple[Path, Path]:
    """Links in target/seen and target/heldout; the held-out part has `fraction` of each class."""
    seen, heldout = target / "seen", target / "heldout"
    shutil.rmtree(target, ignore_errors=True)
    seen.mkdir(parents=True)
    heldout.mkdir()
    rng = random.Random(1234)
    for label in ("cat", "dog"):
        names = sorted(p.name for p in train.iterdir() if p.name.startswith(f"{label}."))
        rng.shuffle(names)
        cut = round(len(names) * fraction)
        for i, name in enumerate(names):
            (heldout if i < cut else seen).joinpath(name).symlink_to((train / name).resolve())
    return seen, heldout


def score(submission: Path) -> dict:
    """Log loss and accuracy of a `--proba dog` CSV whose ids are the held-out file names' stems."""
    with open(submission, newline="") as f:
        rows = list(csv.reader(f))[1:]
    labels = np.array([1 if r[0].startswith("dog") else 0 for r in rows])
    p_dog = np.clip(np.array([float(r[1]) for r in rows]), 1e-15, 1 - 1e-15)
    return {"log_loss": float(log_loss(labels, p_dog, labels=[0, 1])),
            "accuracy": float(((p_dog > 0.5) == labels).mean()), "pictures": len(rows)}


def uncalibrated_copy(stage: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(stage, target)
    meta = json.loads((target / "model.json").read_text())
    meta.pop("temperature", None)
    (target / "model.json").write_text(json.dumps(meta, indent=2))
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--heldout", type=float, default=0.2)
    parser.add_argument("extra", nargs="*", help="after --: more `imgcls finetune` flags (e.g. --resize crop)")
    args = parser.parse_args()
    dvc = unpack(Path(args.data), HERE / "data") / "dogs-vs-cats"
    out = HERE / "out" / ("dvc-heldout" + "".join(f"_{a.strip('-')}" for a in args.extra))
    seen, heldout = hold_out(dvc / "train", out / "data", args.heldout)
    print(f"{len(list(seen.iterdir()))} pictures seen, {len(list(heldout.iterdir()))} held out", flush=True)
    gflops_before = matmul_gflops()
    seeds = [int(s) for s in args.seeds.split(",")]
    singles: dict[str, list[dict]] = {}
    finals: dict[str, list[Path]] = {"calibrated": [], "uncalibrated": []}
    for seed in seeds:
        run = out / f"seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        _, _, finetune_s = run_imgcls(["finetune", seen, *FINETUNE, *args.extra, "--seed", seed,
                                               "--out", run])
        stage2 = json.loads((run / "stage2" / "metrics.json").read_text())
        temperature = json.loads((run / "stage2" / "model.json").read_text()).get("temperature")
        finals["calibrated"].append(run)
        finals["uncalibrated"].append(uncalibrated_copy(run / "stage2", out / f"seed{seed}-uncalibrated"))
        for calibration, model in (("calibrated", run), ("uncalibrated", finals["uncalibrated"][-1])):
            for tta in (False, True):
                name = f"Lite0, {calibration}{', TTA' if tta else ''}"
                submission = out / f"seed{seed}-{calibration}{'-tta' if tta else ''}.csv"
                _, _, predict_s = run_imgcls(["predict", model, heldout, "--proba", "dog", *(["--tta"] if tta else []),
                                              "--out", submission])
                row = {**score(submission), "finetune_s": finetune_s, "predict_s": predict_s,
                       "val_log_loss": stage2["validation"]["log_loss"], "temperature": temperature}
                singles.setdefault(name, []).append(row)
                print(f"seed {seed} {name:28} held-out log loss {row['log_loss']:.4f}  accuracy {row['accuracy']:.4f}"
                      f"  (finetune {finetune_s:.0f} s, predict {predict_s:.0f} s, T {temperature})", flush=True)
    table = {}
    for name, rows in singles.items():
        table[f"{name}: mean ± std over {len(seeds)} seeds"] = {
            "held-out log loss": mean_std([r["log_loss"] for r in rows]),
            "held-out accuracy": mean_std([r["accuracy"] for r in rows]),
            "val log loss (chose the epoch)": mean_std([r["val_log_loss"] for r in rows]),
            "pipeline s (finetune + predict)": mean_std([r["finetune_s"] + r["predict_s"] for r in rows], 1)}
    for calibration, runs in finals.items():
        for tta in (False, True):
            submission = out / f"ensemble-{calibration}{'-tta' if tta else ''}.csv"
            _, _, predict_s = run_imgcls(["predict", *runs, heldout, "--proba", "dog", *(["--tta"] if tta else []),
                                          "--out", submission])
            scored = score(submission)
            finetune_total = sum(singles["Lite0, calibrated"][i]["finetune_s"] for i in range(len(seeds)))
            name = f"ensemble of the {len(seeds)} seeds' models, {calibration}{', TTA' if tta else ''}"
            table[name] = {"held-out log loss": f"{scored['log_loss']:.4f}",
                           "held-out accuracy": f"{scored['accuracy']:.4f}",
                           "pipeline s (finetune + predict)": f"{finetune_total + predict_s:.1f}"}
            print(f"{name:50} held-out log loss {scored['log_loss']:.4f}  accuracy {scored['accuracy']:.4f}  "
                  f"predict {predict_s:.0f} s", flush=True)
    table["held-out pictures"] = {"held-out log loss": str(singles["Lite0, calibrated"][0]["pictures"])}
    table["fp32 matmul 2048² GFLOP/s, before / after"] = {"held-out log loss": f"{gflops_before} / {matmul_gflops()}"}
    (out / "rows.json").write_text(json.dumps(singles, indent=2, default=str))
    print(f"wrote {record(out.name.replace('-', '_'), table)}; appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
