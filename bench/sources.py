"""Data and models from where users keep them (issue 27), on real CIFAR-10 pictures.

- sources: the same N training pictures as class folders, as WebDataset shards (10 tars) and as parquet
  files in the Hugging Face hub's layout (an Image column, ClassLabel names in the metadata). For each:
  the cold decode rate (an empty cache), the warm lookup (the same again, with nothing kept in this
  process's memory, as a second command would), and one seeded epoch of training, whose split and
  history must be identical across the three.
- timm: timm/resnet18 against torchvision's resnet18, from scratch at 32 px: training and inference
  pictures/s in this process, then timm/resnet18 through train → evaluate → predict → export → serve.

    python bench/sources.py [--data ../shared/datasets] [--pictures 10000]

Writes bench/out/sources.json and appends the tables to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from speed import record
from workflows import DEFAULT_DATA, HERE, unpack

WORK = HERE / "out" / "sources"


def pick(root: Path, count: int) -> list[tuple[Path, str]]:
    """The first count/10 pictures of each class folder, in the class-folder layout's order."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    per_class = count // len(classes)
    return [(path, name) for name in classes for path in sorted((root / name).iterdir())[:per_class]]


def write_sources(pictures: list[tuple[Path, str]]) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if WORK.exists():
        shutil.rmtree(WORK)
    folder, shards, hub = WORK / "folder", WORK / "shards", WORK / "hub" / "data"
    for path in (shards, hub):
        path.mkdir(parents=True)
    classes = sorted({name for _, name in pictures})
    per_shard = -(-len(pictures) // 10)
    for s in range(10):
        chunk = pictures[s * per_shard:(s + 1) * per_shard]
        with tarfile.open(shards / f"train-{s:06d}.tar", "w") as tar:
            for i, (path, name) in enumerate(chunk):
                data = path.read_bytes()
                target = folder / name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                # keys sort as the folder layout does: class, then file name
                for suffix, payload in ((path.suffix, data), (".cls", str(classes.index(name)).encode())):
                    info = tarfile.TarInfo(f"{name}_{path.stem}{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        features = {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}
        table = pa.table({"image": [{"bytes": p.read_bytes(), "path": p.name} for p, _ in chunk],
                          "label": [classes.index(n) for _, n in chunk]})
        table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
        pq.write_table(table, hub / f"train-{s:05d}-of-00010.parquet")
    return {"class folders": str(folder), "WebDataset shards (10 tars)": str(shards / "train-{000000..000009}.tar"),
            "parquet (10 files, hub layout)": str(WORK / "hub")}


def decode_rates(source: str, cache: Path) -> dict:
    from imgcls.data.dataset import decode_samples
    from imgcls.data.sources import load_samples
    from imgcls.data.store import CacheSettings

    from imgcls.data import archives

    settings = CacheSettings(cache_dir=str(cache))
    row = {}
    for label in ("cold", "warm"):
        # as a new process would: no shard listing or table kept in memory (the kept listings on disk stay)
        archives._tar_contents.cache_clear()
        archives._table.cache_clear()
        start = time.perf_counter()
        samples = load_samples(source)
        listed = time.perf_counter() - start
        decoded, skipped = decode_samples(samples, 3, 32, cache=settings)
        seconds = time.perf_counter() - start
        row[f"{label}_s"] = round(seconds, 3)
        row[f"{label}_listing_s"] = round(listed, 3)
    row["pictures"] = len(decoded)
    row["cold_pictures_per_s"] = round(len(decoded) / row["cold_s"], 1)
    row["warm_vs_cold"] = round(row["cold_s"] / row["warm_s"], 1)
    return row


def history(source: str, out: Path) -> list:
    subprocess.run([sys.executable, "-m", "imgcls", "-q", "train", source, "--class-names",
                    ",".join(sorted(p.name for p in (WORK / "folder").iterdir())), "--model", "simple-cnn", "--img-size",
                    "32", "--channels", "3", "--epochs", "1", "--seed", "0", "--out", str(out),
                    "--cache-dir", str(WORK / "cache-train")], check=True)
    with open(out / "history.csv", newline="") as f:
        rows = [(r["train_loss"], r["val_loss"], r["val_acc"]) for r in csv.DictReader(f)]
    with open(out / "split.csv", newline="") as f:
        sides = [r["split"] for r in csv.DictReader(f)]
    return [rows, sides]


def timm_against_torchvision(repeats: int = 3) -> dict:
    import torch

    from imgcls.models.registry import create_model

    torch.manual_seed(0)
    result = {}
    x = torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (64,))
    for name in ("resnet18", "timm/resnet18"):
        model = create_model(name, 10, 3, 32).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        rates = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for _ in range(5):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), target).backward()
                optimizer.step()
            rates.append(5 * 64 / (time.perf_counter() - start))
        model.eval()
        inference = []
        with torch.inference_mode():
            for _ in range(repeats + 1):
                start = time.perf_counter()
                for _ in range(10):
                    model(x)
                inference.append(10 * 64 / (time.perf_counter() - start))
        result[name] = {"parameters": sum(p.numel() for p in model.parameters()),
                        "train_pictures_per_s": round(max(rates[1:]), 1),
                        "inference_pictures_per_s": round(max(inference[1:]), 1)}
    return result


def timm_through_every_command(cifar: Path, source: str) -> dict:
    run = WORK / "timm-run"
    steps = {"train": ["train", source, "--model", "timm/resnet18", "--img-size", "32", "--epochs", "3",
                       "--out", str(run), "--cache-dir", str(WORK / "cache-train")],
             "evaluate": ["evaluate", str(run), str(cifar / "test"), "--out", str(WORK / "timm-test.json"),
                          "--cache-dir", str(WORK / "cache-test")],
             "predict": ["predict", str(run), str(cifar / "test" / "cat"), "--out", str(WORK / "timm-cats.csv")],
             "export": ["export", str(run), "--quantize", "int8"]}
    row = {}
    for step, argv in steps.items():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "imgcls", "-q", *argv], check=True)
        row[f"{step}_s"] = round(time.perf_counter() - start, 1)
    from starlette.testclient import TestClient

    from imgcls.serve import create_app

    start = time.perf_counter()
    picture = sorted((cifar / "test" / "cat").iterdir())[0]
    answer = TestClient(create_app(run)).post("/predict", files={"file": (picture.name, picture.read_bytes())})
    row["serve_s"] = round(time.perf_counter() - start, 1)
    row["served"] = answer.json()["class"]
    metrics = json.loads((WORK / "timm-test.json").read_text())
    row["test_accuracy"] = round(metrics["accuracy"], 4)
    row["test_pictures"] = metrics["count"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--pictures", type=int, default=10000)
    args = parser.parse_args()
    cifar = unpack(Path(args.data), HERE / "data") / "cifar10"
    sources = write_sources(pick(cifar / "train", args.pictures))
    time.sleep(2.5)  # as a user's data would be: older than the 2 s in which a listing is not kept (listing.py)
    result, histories = {}, {}
    for name, source in sources.items():
        result[name] = decode_rates(source, WORK / f"cache-{len(result)}")
        histories[name] = history(source, WORK / f"run-{len(histories)}")
        print(name, json.dumps(result[name]), flush=True)
    first = next(iter(histories.values()))
    for name in sources:
        result[name]["same_split_and_history_as_folders"] = histories[name] == first
    result.update({f"{k}: from scratch, 32 px, batch 64": v for k, v in timm_against_torchvision().items()})
    result[f"timm/resnet18 on {args.pictures} CIFAR-10 pictures, 3 epochs, through every command"] = \
        timm_through_every_command(cifar, sources["class folders"])
    for k, v in result.items():
        print(k, json.dumps(v), flush=True)
    record("sources", result)


if __name__ == "__main__":
    main()
