"""Issue 16's GPU figures: the `cifar10-speed` recipe's accuracy and training time, and ResNet-50's
training pictures/s, on this machine's CUDA device.

    python bench/gpu.py cifar10 [--data ../shared/datasets] [--seeds 0,1,2] [--device cuda] [-- more train flags]
    python bench/gpu.py sweep [--variants base,lr0.8,...] [--budget-s 240] [--seeds 0,1,2]
    python bench/gpu.py resnet50 [--batch 256] [--steps 20] [--device cuda]

cifar10, each seed: `imgcls train cifar10/train --recipe cifar10-speed --val-split 0.1 --seed S`, then the
saved run scored with and without flip TTA on its own validation pictures (the choice) and on the 10,000
test pictures. Times come from the run's history.csv: every epoch's seconds include its validation pass,
and epoch 1 includes torch.compile's compilation. airbench times a warmed-up run (compiled beforehand)
and leaves validation out: `airbench_rule_s` is that rule applied to the run's history (each epoch's
training steps alone, epoch 1's replaced by the median of the others'), reported beside the measured
total rather than instead of it (issue 26's 3.0 s target is by this rule).

resnet50: the engine's own training step (Trainer over a BatchLoader, uint8 pictures held on the device,
bf16 autocast, channels_last) at 224 px on random pictures, eager and torch.compile'd, after warm-up.

Both print a table, write bench/out/gpu-<part>.json and append the table to bench/RESULTS.md, with the
device's bf16 matmul rate measured in the same run.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cifar10_budget import validation_folder  # noqa: E402
from speed import mean_std, record  # noqa: E402
from workflows import ARCHIVES, DEFAULT_DATA, run_imgcls  # noqa: E402


def bf16_tflops(device: torch.device) -> float | None:
    """The device's bf16 matmul rate now (median of 10 products of 8192² matrices, after warm-up)."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        rates.append(2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12)
    return round(statistics.median(rates), 1)


def cifar10_folder(data: Path) -> Path:
    """CIFAR-10 unpacked once into bench/data (only this archive: a GPU machine may carry no other)."""
    target = HERE / "data"
    if not (target / "cifar10").is_dir():
        with tarfile.open(data / f"{ARCHIVES['cifar10']}.tar.gz") as tar:
            tar.extractall(target, filter="data")
    return target / "cifar10"


def epoch_seconds(run: Path) -> list[float]:
    with open(run / "history.csv", newline="") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def airbench_rule_seconds(run: Path) -> float | None:
    """The run's time as airbench times its own: training steps only (each epoch's train_seconds, its
    validation left out), with torch.compile's compilation and warm-up left out too (airbench compiles
    and warms up before its timer starts). Here epoch 1 holds the compilation, so its training time is
    replaced by the median of the later epochs'. None for a run of one epoch."""
    with open(run / "history.csv", newline="") as f:
        trained = [float(row["train_seconds"]) for row in csv.DictReader(f)]
    if len(trained) < 2:
        return None
    return round(statistics.median(trained[1:]) + sum(trained[1:]), 2)


def cifar10(args) -> dict:
    import imgcls

    cifar = cifar10_folder(Path(args.data))
    out = HERE / "out" / "gpu-cifar10"
    device = torch.device(args.device)
    before = bf16_tflops(device)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run = out / f"seed{seed}"
        shutil.rmtree(run, ignore_errors=True)
        _, _, wall = run_imgcls(["train", cifar / "train", "--recipe", "cifar10-speed", "--val-split", "0.1",
                                 "--seed", seed, "--device", args.device, "--out", run, *args.extra])
        seconds = epoch_seconds(run)
        val = validation_folder(run, out / f"seed{seed}-val")
        scores = {f"{split}_accuracy{'_tta' if tta else ''}":
                  imgcls.evaluate(run, str(folder), tta=tta, device=args.device)["accuracy"]
                  for split, folder in (("val", val), ("test", cifar / "test")) for tta in (False, True)}
        row = {"train_seconds": round(sum(seconds), 2), "epoch_1_s": seconds[0],
               "later_epoch_median_s": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
               "steady_10_epochs_s": round(10 * statistics.median(seconds[1:]), 2) if len(seconds) > 1 else None,
               "airbench_rule_s": airbench_rule_seconds(run), "train_command_wall_s": round(wall, 1), **scores}
        rows.append(row)
        print(f"seed {seed}: {row}", flush=True)
    # Flip TTA is used on test only if it raised the mean validation accuracy: chosen on validation.
    tta = statistics.mean(r["val_accuracy_tta"] for r in rows) > statistics.mean(r["val_accuracy"] for r in rows)
    chosen = "test_accuracy_tta" if tta else "test_accuracy"
    keys = [k for k in rows[0] if rows[0][k] is not None]
    table = {f"cifar10-speed, mean ± std over {len(rows)} seeds":
             {k: mean_std([r[k] for r in rows], 2 if k.endswith("s") else 4) for k in keys},
             f"chosen on validation: {'flip TTA' if tta else 'no TTA'}": {"test_accuracy": mean_std([r[chosen] for r in rows])},
             "bf16 matmul 8192² TFLOP/s, before / after": {"train_seconds": f"{before} / {bf16_tflops(device)}"}}
    (out / "rows.json").write_text(json.dumps(rows, indent=2))
    return table


# The recipe's optimiser settings tried on validation (issue 16: 85 % at lr 0.2 where airbench reaches 94 %).
# airbench94's SGD on summed losses, restated for a mean loss: lr 11.5 / (1024 * (1 + 1 / 0.15)) * 1024 = 1.5
# and a per-step decay of 2e-3, i.e. weight decay 1.3e-3 at lr 1.5.
VARIANTS = {"base": {}, "lr0.8": {"lr": 0.8}, "lr0.4": {"lr": 0.4},
            "lr1.5-wd1.3e-3": {"lr": 1.5, "weight_decay": 1.3e-3}, "lr1.5": {"lr": 1.5},
            "lr0.8-wd1.5e-3": {"lr": 0.8, "weight_decay": 1.5e-3},
            # then (higher rates having lost): lower, more steps, no shifts, undecayed norm layers
            "lr0.1": {"lr": 0.1}, "batch512": {"batch_size": 512}, "augment-none": {"augment": "none"},
            "nwd0": {"norm_weight_decay": 0.0}}


def sweep(args) -> dict:
    """The recipe and variants of its optimiser settings, every seed, chosen by mean validation accuracy
    (best epoch); only the chosen variant is scored on test. Variants stop starting after --budget-s."""
    import yaml

    import imgcls

    cifar = cifar10_folder(Path(args.data))
    out = HERE / "out" / "gpu-sweep"
    device = torch.device(args.device)
    before = bf16_tflops(device)
    fixed = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    start, runs = time.perf_counter(), {}
    for name in args.variants.split(","):
        if time.perf_counter() - start > args.budget_s:
            print(f"budget spent: {name} not run", flush=True)
            break
        runs[name] = []
        for seed in seeds:
            run = out / f"{name}-seed{seed}"
            shutil.rmtree(run, ignore_errors=True)
            result = imgcls.train(source=str(cifar / "train"), recipe="cifar10-speed", val_split=0.1, seed=seed,
                                  device=args.device, out=str(run), report=False, **{**VARIANTS[name], **fixed})
            seconds = epoch_seconds(run)
            runs[name].append({"run": str(run), "val_accuracy": result.val_accuracy,
                               "val_log_loss": result.val_log_loss, "best_epoch": result.best_epoch,
                               "train_seconds": round(sum(seconds), 2),
                               "steady_epochs_s": round(len(seconds) * statistics.median(seconds[1:]), 2)
                               if len(seconds) > 1 else None})
            print(f"{name} seed {seed}: {runs[name][-1]}", flush=True)
        (out / "runs.json").write_text(json.dumps(runs, indent=2))
    chosen = max(runs, key=lambda n: statistics.mean(r["val_accuracy"] for r in runs[n]))
    for row in runs[chosen]:
        run = Path(row["run"])
        val = validation_folder(run, run.parent / f"{run.name}-val")
        for split, folder in (("val", val), ("test", cifar / "test")):
            for tta in (False, True):
                row[f"{split}_accuracy{'_tta' if tta else ''}"] = imgcls.evaluate(
                    run, str(folder), tta=tta, device=args.device)["accuracy"]
        print(f"{chosen} {run.name}: {row}", flush=True)
    (out / "runs.json").write_text(json.dumps(runs, indent=2))
    table = {}
    for name, rows in runs.items():
        keys = [k for k in rows[0] if k != "run" and rows[0][k] is not None]
        table[f"{name} {VARIANTS[name] or '(the recipe)'}"] = {
            k: mean_std([r[k] for r in rows], 2 if k.endswith("s") else 4) for k in keys if k != "best_epoch"}
    tta = statistics.mean(r["val_accuracy_tta"] for r in runs[chosen]) > statistics.mean(
        r["val_accuracy"] for r in runs[chosen])
    table[f"chosen on validation: {chosen}, {'flip TTA' if tta else 'no TTA'} (also chosen on validation)"] = {
        "test_accuracy": mean_std([r["test_accuracy_tta" if tta else "test_accuracy"] for r in runs[chosen]])}
    table["bf16 matmul 8192² TFLOP/s, before / after"] = {"val_accuracy": f"{before} / {bf16_tflops(device)}"}
    return table


def resnet50(args) -> dict:
    """Training pictures/s of the engine's step on ResNet-50 at 224 px, eager and compiled."""
    from imgcls.data.dataset import DecodedImages
    from imgcls.data.loader import BatchLoader
    from imgcls.engine.optim import Schedule, build_optimizer
    from imgcls.engine.trainer import Trainer
    from imgcls.models.registry import create_model

    device = torch.device(args.device)
    before = bf16_tflops(device)
    n = args.batch * args.steps
    images = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8)
    labels = torch.randint(0, 1000, (n,))
    table = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = create_model("resnet50", 1000, 3, 224).to(device).to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, "sgd", 0.1, 0.9, 5e-5)
        loader = BatchLoader(DecodedImages(images, labels, [""] * n), args.batch, [0.5] * 3, [0.25] * 3,
                             shuffle=True, device=device, generator=torch.Generator().manual_seed(0),
                             channels_last=True)
        autocast = torch.bfloat16 if device.type == "cuda" else None
        trainer = Trainer(model, optimizer, Schedule(optimizer, "none", 1, args.steps), autocast=autocast,
                          train_model=torch.compile(model) if compiled else model)
        start = time.perf_counter()
        trainer.train_one_epoch(loader)  # warm-up (and compilation)
        warm_up = time.perf_counter() - start
        rates = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_one_epoch(loader)  # ends in .item(): synchronised
            rates.append(n / (time.perf_counter() - start))
        name = f"ResNet-50 224 px, batch {args.batch}, {'compiled' if compiled else 'eager'}"
        table[name] = {"train_img_s": mean_std(rates, 0), "warm_up_epoch_s": round(warm_up, 1),
                       "repeats": args.repeats}
        print(f"{name}: {table[name]}", flush=True)
    table["bf16 matmul 8192² TFLOP/s, before / after"] = {"train_img_s": f"{before} / {bf16_tflops(device)}"}
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["cifar10", "sweep", "resnet50"])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="sweep: names from VARIANTS")
    parser.add_argument("--budget-s", type=float, default=600, help="sweep: start no variant after this")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="sweep: a train() override for every run (e.g. epochs=1 for a smoke test)")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]  # after --: more `imgcls train` flags (cifar10)
    table = {"cifar10": cifar10, "sweep": sweep, "resnet50": resnet50}[args.part](args)
    print(f"wrote {record(f'gpu-{args.part}', table)}; appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
