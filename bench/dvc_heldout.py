"""Issue 16's Dogs vs. Cats target under the protocol: log loss on labelled pictures that no choice was
made on, for one EfficientNet-Lite model (Lite0 by default; --models) and for ensembles (each seed's
models together, and every run together), with and without the validation-fitted temperature
(--calibrate) and test-time augmentation.

    python bench/dvc_heldout.py [--data ../shared/datasets] [--seeds 0,1,2] [--heldout 0.2]
                                [--models efficientnet_lite0,efficientnet_lite2] [--no-tta] [-- FINETUNE FLAGS]
    python bench/dvc_heldout.py --one-command --models efficientnet_lite0,efficientnet_lite2

--one-command: the documented ensemble command (`imgcls finetune ... --models A,B`, one folder) per
seed, then `imgcls predict OUT` with the TTA that folder chose on its validation pictures; for
information, the same folder predicted with --tta 1 and --tta 2 too (never used to choose anything).

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
FINETUNE = ["--label-pattern", PATTERN, "--split", "balanced", "--clean",
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


def short(model: str) -> str:
    return model.replace("efficientnet_lite", "Lite")


def seeds_summary(rows: list[dict], val_column: str) -> dict:
    """One setting's seeds as table cells: held-out log loss and accuracy, validation log loss (under
    `val_column`) and the pipeline's seconds, each mean ± std."""
    return {"held-out log loss": mean_std([r["log_loss"] for r in rows]),
            "held-out accuracy": mean_std([r["accuracy"] for r in rows]),
            val_column: mean_std([r["val_log_loss"] for r in rows]),
            "pipeline s (finetune + predict)": mean_std([r["finetune_s"] + r["predict_s"] for r in rows], 1)}


def one_command(models: list[str], seeds: list[int], seen: Path, heldout: Path, out: Path, extra: list) -> dict:
    """Each seed: one `finetune --models` command and one `predict OUT`; rows for the table."""
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        run = out / f"ensemble-seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        _, _, finetune_s = run_imgcls(["finetune", seen, *FINETUNE, "--models", ",".join(models), *extra,
                                       "--seed", seed, "--out", run])
        record = json.loads((run / "ensemble.json").read_text())["tta"]
        temperatures = [json.loads(p.read_text()).get("temperature", 1.0)
                        for p in sorted(run.glob("*/stage2/model.json"))]
        # each member's views, chosen on its own validation log loss (ensembles before 2026-12-08: one for all)
        views = ("+".join(str(v) for v in record["member_views"].values()) if "member_views" in record
                 else str(record["views"]))
        for name, flags in (("the command (TTA chosen on validation)", []), ("--tta 1 (for information)", ["--tta", "1"]),
                            ("--tta 2 (for information)", ["--tta", "2"])):
            submission = out / f"ensemble-seed{seed}{'-'.join([''] + flags)}.csv"
            _, _, predict_s = run_imgcls(["predict", run, heldout, "--proba", "dog", *flags, "--out", submission])
            row = {**score(submission), "finetune_s": finetune_s, "predict_s": predict_s,
                   "val_log_loss": record["log_loss"].get("chosen", record["log_loss"].get(views)), "views": views,
                   "val_log_loss_by_views": record["log_loss"], "temperatures": temperatures}
            rows.setdefault(name, []).append(row)
            print(f"seed {seed} {name:40} held-out log loss {row['log_loss']:.4f}  accuracy {row['accuracy']:.4f}  "
                  f"(finetune {finetune_s:.0f} s, predict {predict_s:.0f} s, chose {views} view(s) on "
                  f"validation {record['log_loss']}, T {temperatures})", flush=True)
    table = {}
    for name, found in rows.items():
        table[f"{' + '.join(map(short, models))}, {name}: mean ± std over {len(seeds)} seeds"] = {
            **seeds_summary(found, "val log loss (ensemble, chosen views)"),
            "views chosen": ",".join(str(r["views"]) for r in found)}
    (out / "rows.json").write_text(json.dumps(rows, indent=2, default=str))
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--heldout", type=float, default=0.2)
    parser.add_argument("--models", default="efficientnet_lite0",
                        help="one finetune per model and seed; with several, each seed's models are also ensembled")
    parser.add_argument("--no-tta", action="store_true", help="leave out the flip-TTA predictions")
    parser.add_argument("--one-command", action="store_true",
                        help="the documented `finetune --models` command and `predict OUT` per seed")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    extra = argv[cut + 1:]  # after --: more `imgcls finetune` flags (e.g. --resize crop)
    models = args.models.split(",")
    dvc = unpack(Path(args.data), HERE / "data") / "dogs-vs-cats"
    suffix = ("".join(f"_{a.strip('-')}" for a in extra) + ("" if models == ["efficientnet_lite0"]
                                                            else "_" + "_".join(map(short, models)))
              + ("_one_command" if args.one_command else ""))
    out = HERE / "out" / ("dvc-heldout" + suffix)
    seen, heldout = hold_out(dvc / "train", out / "data", args.heldout)
    print(f"{len(list(seen.iterdir()))} pictures seen, {len(list(heldout.iterdir()))} held out", flush=True)
    gflops_before = matmul_gflops()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.one_command:
        table = one_command(models, seeds, seen, heldout, out, extra)
        table["held-out pictures"] = {"held-out log loss": str(len(list(heldout.iterdir())))}
        table["fp32 matmul 2048² GFLOP/s, before / after"] = {"held-out log loss":
                                                              f"{gflops_before} / {matmul_gflops()}"}
        print(f"wrote {record(out.name.replace('-', '_'), table)}; appended to bench/RESULTS.md")
        return
    ttas = (False,) if args.no_tta else (False, True)
    singles: dict[str, list[dict]] = {}
    # (model, calibration) → each seed's run folder; a calibrated finetune folder predicts with its temperature
    finals: dict[tuple[str, str], list[Path]] = {}
    finetune_seconds: dict[tuple[str, int], float] = {}
    for seed in seeds:
        for model in models:
            run = out / f"{short(model)}-seed{seed}"
            shutil.rmtree(run, ignore_errors=True)
            _, _, finetune_s = run_imgcls(["finetune", seen, *FINETUNE, "--model", model, *extra, "--seed", seed,
                                           "--out", run])
            finetune_seconds[model, seed] = finetune_s
            stage2 = json.loads((run / "stage2" / "metrics.json").read_text())
            temperature = json.loads((run / "stage2" / "model.json").read_text()).get("temperature")
            uncalibrated = uncalibrated_copy(run / "stage2", out / f"{short(model)}-seed{seed}-uncalibrated")
            for calibration, folder in (("calibrated", run), ("uncalibrated", uncalibrated)):
                finals.setdefault((model, calibration), []).append(folder)
                for tta in ttas:
                    name = f"{short(model)}, {calibration}{', TTA' if tta else ''}"
                    submission = out / f"{short(model)}-seed{seed}-{calibration}{'-tta' if tta else ''}.csv"
                    _, _, predict_s = run_imgcls(["predict", folder, heldout, "--proba", "dog",
                                                  *(["--tta"] if tta else []), "--out", submission])
                    row = {**score(submission), "finetune_s": finetune_s, "predict_s": predict_s,
                           "val_log_loss": stage2["validation"]["log_loss"], "temperature": temperature}
                    singles.setdefault(name, []).append(row)
                    print(f"seed {seed} {name:28} held-out log loss {row['log_loss']:.4f}  accuracy "
                          f"{row['accuracy']:.4f}  (finetune {finetune_s:.0f} s, predict {predict_s:.0f} s, "
                          f"T {temperature})", flush=True)
    table = {}
    for name, rows in singles.items():
        table[f"{name}: mean ± std over {len(seeds)} seeds"] = seeds_summary(rows, "val log loss (chose the epoch)")
    if len(models) > 1:  # each seed's models together: the pipeline a user runs for a mixed ensemble
        for calibration in ("calibrated", "uncalibrated"):
            for tta in ttas:
                rows = []
                for i, seed in enumerate(seeds):
                    submission = out / f"mixed-seed{seed}-{calibration}{'-tta' if tta else ''}.csv"
                    _, _, predict_s = run_imgcls(["predict", *(finals[m, calibration][i] for m in models), heldout,
                                                  "--proba", "dog", *(["--tta"] if tta else []), "--out", submission])
                    rows.append({**score(submission), "pipeline_s": predict_s + sum(
                        finetune_seconds[m, seed] for m in models)})
                name = f"{' + '.join(map(short, models))} of one seed, {calibration}{', TTA' if tta else ''}"
                table[f"{name}: mean ± std over {len(seeds)} seeds"] = {
                    "held-out log loss": mean_std([r["log_loss"] for r in rows]),
                    "held-out accuracy": mean_std([r["accuracy"] for r in rows]),
                    "pipeline s (finetune + predict)": mean_std([r["pipeline_s"] for r in rows], 1)}
                print(f"{name:50} held-out log loss {table[f'{name}: mean ± std over {len(seeds)} seeds']}",
                      flush=True)
    for calibration in ("calibrated", "uncalibrated"):
        for tta in ttas:
            runs = [run for model in models for run in finals[model, calibration]]
            submission = out / f"ensemble-{calibration}{'-tta' if tta else ''}.csv"
            _, _, predict_s = run_imgcls(["predict", *runs, heldout, "--proba", "dog", *(["--tta"] if tta else []),
                                          "--out", submission])
            scored = score(submission)
            name = f"ensemble of all {len(runs)} models, {calibration}{', TTA' if tta else ''}"
            table[name] = {"held-out log loss": f"{scored['log_loss']:.4f}",
                           "held-out accuracy": f"{scored['accuracy']:.4f}",
                           "pipeline s (finetune + predict)": f"{sum(finetune_seconds.values()) + predict_s:.1f}"}
            print(f"{name:50} held-out log loss {scored['log_loss']:.4f}  accuracy {scored['accuracy']:.4f}  "
                  f"predict {predict_s:.0f} s", flush=True)
    table["held-out pictures"] = {"held-out log loss": str(next(iter(singles.values()))[0]["pictures"])}
    table["fp32 matmul 2048² GFLOP/s, before / after"] = {"held-out log loss": f"{gflops_before} / {matmul_gflops()}"}
    (out / "rows.json").write_text(json.dumps(singles, indent=2, default=str))
    print(f"wrote {record(out.name.replace('-', '_'), table)}; appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
