"""Speed benchmarks (issue 5): the hardware's matmul rate, the training loop's overhead against a bare
PyTorch loop, the data pipeline against torchvision's ImageFolder + DataLoader, and predict against a
plain PIL loop. Each prints a table and writes bench/out/speed-<name>.json with every repeat.

    python bench/speed.py matmul|overhead|layout|pipeline|decode|predict [--data ../shared/datasets] [--repeats 5]
    python bench/speed.py fashion|cifar10 [--repeats 1] [-- extra imgcls train flags]
    python bench/speed.py startup [--src OTHER_CHECKOUT/src]

fashion and cifar10 time the whole command line (decoding included): `imgcls train` with the default
recipe, then `imgcls evaluate` on the test pictures. Every run appends its table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workflows import DEFAULT_DATA, HERE, run_imgcls, unpack


def machine() -> dict:
    import torchvision

    import imgcls
    return {"platform": platform.platform(), "processor": _cpu_name(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
            "imgcls": imgcls.__version__, "python": platform.python_version(), "matmul_gflops": matmul_gflops()}


def matmul_gflops() -> float:
    """The machine's fp32 matrix-multiply rate now (median of 5 products of 2048² matrices): timings
    carry the rate measured in their own run, since this machine kind's rate moves (97-170 GFLOP/s)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        rates.append(2 * 2048**3 / (time.perf_counter() - start) / 1e9)
    return round(statistics.median(rates), 1)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def mean_std(values: list[float], digits: int = 4) -> str:
    """"mean ± sample standard deviation" over seeds (0 spread for one value): the protocol's headline cell."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def summary(values: list[float], digits: int = 2) -> dict:
    return {"repeats": [round(v, digits) for v in values], "median": round(statistics.median(values), digits),
            "spread": round(max(values) - min(values), digits)}


def matmul(args) -> dict:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        a @ b
        rates.append(2 * 2048**3 / (time.perf_counter() - start) / 1e9)
    print(f"fp32 matmul 2048²: {statistics.median(rates):.1f} GFLOP/s")
    return {"gflops": summary(rates)}


def _train_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Training FLOPs per picture: 3x the forward's FLOPs (forward + two backward products)."""
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, *shape))
    model.train()
    return 3 * counter.get_total_flops()


def overhead(args) -> dict:
    """imgcls's Trainer over its uint8 cache vs a bare loop over normalised float tensors, alternating."""
    from imgcls.data.dataset import DecodedImages
    from imgcls.data.loader import BatchLoader
    from imgcls.engine.optim import Schedule, build_optimizer
    from imgcls.engine.trainer import Trainer
    from imgcls.models.registry import create_model

    rows = {}
    for name, shape, batch, steps in [("simple-cnn", (1, 28, 28), 256, 60), ("resnet18", (3, 32, 32), 128, 12),
                                      ("airnet", (1, 28, 28), 256, 12)]:
        n = batch * steps
        images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,))
        floats = (images.float() - 127.5) / 64
        model = create_model(name, 10, shape[0], shape[1])
        optimizer = build_optimizer(model, "adam", 1e-3)
        loader = BatchLoader(DecodedImages(images, labels, [""] * n), batch, [0.5] * shape[0], [0.25] * shape[0],
                             shuffle=True, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
        trainer = Trainer(model, optimizer, Schedule(optimizer, "none", 1, steps))

        def bare() -> None:
            model.train()
            for i in torch.randperm(n).split(batch):
                loss = F.cross_entropy(model(floats[i]), labels[i])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        rates = {"imgcls": [], "bare": []}
        trainer.train_one_epoch(loader)  # warm-up
        for _ in range(args.repeats):
            for kind, run in (("imgcls", lambda: trainer.train_one_epoch(loader)), ("bare", bare)):
                start = time.perf_counter()
                run()
                rates[kind].append(n / (time.perf_counter() - start))
        flops = _train_flops(model, shape)
        ratio = [a / b for a, b in zip(rates["imgcls"], rates["bare"])]
        rows[name] = {"imgcls_img_s": summary(rates["imgcls"]), "bare_img_s": summary(rates["bare"]),
                      "ratio": summary(ratio), "train_gflop_per_picture": round(flops / 1e9, 4),
                      "imgcls_gflops": round(statistics.median(rates["imgcls"]) * flops / 1e9, 1)}
        print(f"{name:11} imgcls {statistics.median(rates['imgcls']):8.0f} img/s  bare "
              f"{statistics.median(rates['bare']):8.0f} img/s  ratio {statistics.median(ratio):.3f}  "
              f"({rows[name]['imgcls_gflops']} GFLOP/s)")
    return rows


def layout(args) -> dict:
    """Training pictures/s with NCHW against channels_last memory layout, same model, alternating."""
    from imgcls.engine.optim import build_optimizer
    from imgcls.models.registry import create_model

    rows = {}
    from imgcls.config import RECIPES

    speed_args = RECIPES["cifar10-speed"]["model_args"]
    for name, shape, batch, steps, model_args in [
            ("airnet", (1, 28, 28), 256, 12, {}), ("airnet", (3, 32, 32), 256, 8, {}),
            ("airnet", (3, 32, 32), 512, 2, speed_args),  # the cifar10-speed recipe's network
            ("simple-cnn", (1, 28, 28), 256, 30, {}), ("resnet18", (3, 32, 32), 128, 6, {})]:
        images = torch.randn(batch * steps, *shape)
        labels = torch.randint(0, 10, (batch * steps,))
        torch.manual_seed(0)
        # One model and optimiser per layout: switching one model back and forth would leave the
        # optimiser's state in the other layout and slow whichever layout came second.
        models = {fmt: create_model(name, 10, shape[0], shape[1], **model_args).to(memory_format=fmt)
                  for fmt in (torch.contiguous_format, torch.channels_last)}
        optimizers = {fmt: build_optimizer(model, "adamw", 1e-3) for fmt, model in models.items()}

        def epoch(memory_format) -> float:
            model, optimizer = models[memory_format].train(), optimizers[memory_format]
            start = time.perf_counter()
            for i in range(steps):
                x = images[i * batch:(i + 1) * batch].contiguous(memory_format=memory_format)
                loss = F.cross_entropy(model(x), labels[i * batch:(i + 1) * batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return batch * steps / (time.perf_counter() - start)

        epoch(torch.contiguous_format)  # warm-up
        epoch(torch.channels_last)
        rates = {"nchw": [], "channels_last": []}
        for _ in range(args.repeats):
            rates["nchw"].append(epoch(torch.contiguous_format))
            rates["channels_last"].append(epoch(torch.channels_last))
        key = f"{name} {'x'.join(map(str, shape))}" + (" (cifar10-speed)" if model_args else "")
        ratio = statistics.median(rates["channels_last"]) / statistics.median(rates["nchw"])
        flops = _train_flops(models[torch.contiguous_format], shape)
        rows[key] = {"nchw_img_s": summary(rates["nchw"]), "channels_last_img_s": summary(rates["channels_last"]),
                     "ratio": round(ratio, 3), "train_gflop_per_picture": round(flops / 1e9, 4)}
        print(f"{key:20} NCHW {statistics.median(rates['nchw']):7.0f} img/s  channels_last "
              f"{statistics.median(rates['channels_last']):7.0f} img/s  ratio {ratio:.2f}")
    return rows


def pipeline(args) -> dict:
    """Pictures/s delivered as normalised batches: imgcls (decode once, then cut batches) vs ImageFolder."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from imgcls.data.dataset import decode_samples
    from imgcls.data.loader import BatchLoader
    from imgcls.data.sources import load_samples

    folder = unpack(Path(args.data), HERE / "data") / "cifar10" / "train"
    start = time.perf_counter()
    decoded, _ = decode_samples(load_samples(str(folder)), 3, 32)
    loader = BatchLoader(decoded, 256, [0.5] * 3, [0.25] * 3, shuffle=True, device=torch.device("cpu"))
    for _ in loader:
        pass
    first = len(decoded) / (time.perf_counter() - start)
    later = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in loader:
            pass
        later.append(len(decoded) / (time.perf_counter() - start))
    plain_set = datasets.ImageFolder(str(folder), transforms.Compose([transforms.ToTensor(),
                                                                      transforms.Normalize([0.5] * 3, [0.25] * 3)]))
    plain = []
    for _ in range(min(args.repeats, 3)):
        start = time.perf_counter()
        for _ in DataLoader(plain_set, batch_size=256, shuffle=True, num_workers=2):
            pass
        plain.append(len(plain_set) / (time.perf_counter() - start))
    ratio = statistics.median(later) / statistics.median(plain)
    print(f"imgcls epoch 1 {first:8.0f} img/s  later {statistics.median(later):10.0f} img/s  "
          f"ImageFolder+DataLoader(2 workers) {statistics.median(plain):8.0f} img/s  later/plain {ratio:.1f}x")
    return {"pictures": len(decoded), "imgcls_epoch1_img_s": round(first, 1), "imgcls_later_img_s": summary(later),
            "plain_img_s": summary(plain), "later_over_plain": round(ratio, 1)}


def decode(args) -> dict:
    """Decoding the 60,000 Fashion-MNIST training PNGs into memory (no cache): in threads (Pillow holds
    the GIL for most of a small picture) against forked processes (the default from 4,096 pictures),
    alternating so that a slow spell of the machine touches both."""
    from imgcls.data.decode import decode_all

    folder = unpack(Path(args.data), HERE / "data") / "fashion-mnist" / "train"
    paths = sorted(str(p) for p in folder.glob("*.png"))
    cases = {"threads": dict(processes=1), "processes": dict(processes=None)}  # None: the default, one per core
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, kw in cases.items():
            start = time.perf_counter()
            array, _, _ = decode_all(paths, 1, 28, **kw)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{len(paths)} PNGs, {name:9} {statistics.median(values):6.1f} s")
    return {f"{len(paths)} Fashion-MNIST PNGs, {name}": {"seconds": summary(values)} for name, values in times.items()}


def predict(args) -> dict:
    """`imgcls predict` on the Dogs vs. Cats test JPEGs (1,001, median about 440x374) with a cifar-cnn at
    32 px vs a plain PIL (open, RGB, resize) + model loop."""
    from PIL import Image

    from imgcls.predict import load_run

    root = unpack(Path(args.data), HERE / "data")
    data, test = root / "cifar10", root / "dogs-vs-cats" / "test1"
    run_dir = HERE / "out" / "speed-predict-run"
    if not (run_dir / "model.json").is_file():
        run_imgcls(["train", data / "train", "--model", "cifar-cnn", "--epochs", "1", "--train-batches", "20",
                    "--out", run_dir])
    paths = sorted(str(p) for p in test.glob("*.jpg"))
    imgcls_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run_imgcls(["predict", run_dir, test, "--out", HERE / "out" / "speed-predict.csv"])
        imgcls_s.append(len(paths) / (time.perf_counter() - start))
    run = load_run(run_dir, "cpu")
    model = run.model.to(memory_format=torch.contiguous_format)  # what a plain loop gets from torch
    mean = torch.tensor(run.card.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(run.card.preprocess.std).view(1, 3, 1, 1)
    plain_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()  # in-process: no start-up cost, unlike the CLI above
        with torch.no_grad():
            for i in range(0, len(paths), 256):
                batch = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR)))
                                     for p in paths[i:i + 256]]).permute(0, 3, 1, 2).float() / 255
                model((batch - mean) / std).softmax(1)
        plain_s.append(len(paths) / (time.perf_counter() - start))
    ratio = statistics.median(imgcls_s) / statistics.median(plain_s)
    print(f"imgcls predict (CLI, start-up included) {statistics.median(imgcls_s):8.0f} pictures/s  plain PIL loop "
          f"{statistics.median(plain_s):8.0f} pictures/s  ratio {ratio:.2f}")
    return {"pictures": len(paths), "imgcls_cli_pictures_s": summary(imgcls_s), "plain_pictures_s": summary(plain_s),
            "ratio": round(ratio, 2)}


def _recipe_runs(args, name: str, train: list, test: list, variants: list[tuple[str, list]]) -> dict:
    """Each variant: `imgcls train` + `imgcls evaluate` (plain and --tta) timed end to end, `repeats` times."""
    rows = {}
    for label, flags in variants:
        walls, accs, tta_accs, epoch_s, flops = [], [], [], [], None
        for repeat in range(args.repeats):
            run_dir = HERE / "out" / f"{name}-{len(rows)}-{repeat}"
            if run_dir.exists():
                import shutil
                shutil.rmtree(run_dir)
            _, _, train_s = run_imgcls(["train", *train, *flags, *args.extra, "--out", run_dir])
            _, _, eval_s = run_imgcls(["evaluate", run_dir, *test, "--out", run_dir / "test.json"])
            run_imgcls(["evaluate", run_dir, *test, "--tta", "--out", run_dir / "test_tta.json"])
            walls.append(train_s + eval_s)
            accs.append(json.loads((run_dir / "test.json").read_text())["accuracy"])
            tta_accs.append(json.loads((run_dir / "test_tta.json").read_text())["accuracy"])
            with open(run_dir / "history.csv", newline="") as f:
                epoch_s += [float(row["seconds"]) for row in csv.DictReader(f)]
            flops = flops or _run_flops(run_dir)
        rows[label] = {"flags": " ".join(map(str, [*flags, *args.extra])), "wall_s": summary(walls),
                       "test_accuracy": summary(accs, 4), "test_accuracy_tta": summary(tta_accs, 4),
                       "epoch_s": summary(epoch_s) if epoch_s else None, "train_gflop_per_picture": flops}
        print(f"{label:38} wall {statistics.median(walls):7.1f} s  test acc {statistics.median(accs):.4f}  "
              f"(--tta {statistics.median(tta_accs):.4f})  {flops} GFLOP/picture trained")
    return rows


def _run_flops(run_dir: Path) -> float:
    from imgcls.predict import load_run
    run = load_run(run_dir, "cpu")
    return round(_train_flops(run.model, (run.card.preprocess.channels, run.card.preprocess.size, run.card.preprocess.size)) / 1e9, 4)


def fashion(args) -> dict:
    """The apparel CSV layout: the default recipe, and the walkthrough's 4-filter simple-cnn with mini-batches."""
    fm = unpack(Path(args.data), HERE / "data") / "fashion-mnist"
    train = [fm / "train", "--labels", fm / "train.csv", "--val-split", "0.1"]
    test = [fm / "test", "--labels", fm / "test_labels.csv"]
    variants = [("default recipe (small: airnet)", [])]
    if not args.extra:
        variants.append(("walkthrough simple-cnn width=4", ["--model", "simple-cnn", "--model-arg", "width=4",
                                                            "--epochs", "10", "--batch-size", "64"]))
    return _recipe_runs(args, "fashion", train, test, variants)


def cifar10(args) -> dict:
    """The CIFAR-10 class folders (50,000 train JPEGs, 10,000 test): the default recipe."""
    cifar = unpack(Path(args.data), HERE / "data") / "cifar10"
    return _recipe_runs(args, "cifar10", [cifar / "train", "--val-split", "0.1"], [cifar / "test"],
                        [("default recipe (small: airnet)", [])])


def startup(args) -> dict:
    """Seconds until a command that needs no model answers: --help, the models listing, an argument
    mistake, `import imgcls`. --src DIR times another checkout's src folder (e.g. an older commit's)."""
    import os
    import subprocess

    env = dict(os.environ, **({"PYTHONPATH": str(Path(args.src).resolve())} if args.src else {}))
    cases = {"imgcls --help": ["-m", "imgcls", "--help"], "imgcls models": ["-m", "imgcls", "models"],
             "imgcls train digits --lr -1 (a mistake)": ["-m", "imgcls", "train", "digits", "--lr", "-1"],
             "python -c 'import imgcls'": ["-c", "import imgcls"]}
    result = {}
    for name, argv in cases.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, *argv], env=env, capture_output=True)
            times.append(time.perf_counter() - start)
        result[name] = {"seconds": summary(times, 3)}
        print(f"{name:42} {statistics.median(times):.3f} s")
    return result


def append_results(command: str, result: dict, info: dict) -> None:
    """Append a table of medians (spread over the repeats) to bench/RESULTS.md; the JSON in bench/out
    keeps every repeat."""
    def cell(value) -> str:
        if isinstance(value, dict) and "median" in value:
            return f"{value['median']:,}" + (f" (±{value['spread'] / 2:,.4g})" if len(value["repeats"]) > 1 else "")
        return "" if value is None else str(value)

    rows = result if all(isinstance(v, dict) and "median" not in v for v in result.values()) else {"": result}
    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    lines = [f"\n### `{command}` ({time.strftime('%Y-%m-%d')})\n",
             f"{info['processor']}, {info['threads']} threads, torch {info['torch']}"
             + (f", {info['cuda']}" if info["cuda"] else "")
             + f", fp32 matmul {info['matmul_gflops']} GFLOP/s at the end of the run"
             + "; medians (± half the spread) of the repeats.\n",
             "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(row.get(c)) for c in columns) + " |" for name, row in rows.items()]
    with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def record(name: str, result: dict) -> Path:
    """bench/out/<name>.json with the command and machine, and the table appended to bench/RESULTS.md."""
    command = " ".join(["python", *sys.argv])
    info = machine()
    out = HERE / "out" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"command": command, "machine": info, "result": result}, indent=2))
    append_results(command, result, info)
    return out


def main() -> None:
    benches = {"matmul": matmul, "overhead": overhead, "layout": layout, "pipeline": pipeline, "decode": decode,
               "predict": predict,
               "fashion": fashion, "cifar10": cifar10, "startup": startup}
    parser = argparse.ArgumentParser()
    parser.add_argument("bench", choices=list(benches))
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, help="default: 5, or 1 for fashion and cifar10")
    parser.add_argument("--src", help="startup: time this src folder instead of the installed imgcls")
    parser.add_argument("extra", nargs="*", help="after --: more `imgcls train` flags (fashion, cifar10)")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.bench in ("fashion", "cifar10") else 5)
    out = record(f"speed-{args.bench}", benches[args.bench](args))
    print(f"wrote {out}; appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
