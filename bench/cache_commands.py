"""The one cache across commands and processes (issue 13), each command a fresh process as a user runs it:

- torchrun: `imgcls train --nproc 2` against 1 process on Dogs vs. Cats decoded at 448 px (2,002 JPEGs,
  1,206 MB decoded; cold cache, batch 16, 20 batches): rank 0's decode time (or its wait while the
  other rank decoded) and the memory of the whole process group (a cgroup's peak, page cache
  counted once), with the cache and with --no-cache (each rank its own array);
- the frozen-feature cache: a frozen pretrained EfficientNet-Lite0 at 224 px on Dogs vs. Cats, the
  first command computing the backbone's output and a second one reading it;
- `imgcls check` of Dogs vs. Cats, first and second time.

    sudo python bench/cache_commands.py [--data ../shared/datasets]

Prints each row, writes bench/out/cache_commands.json and appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from speed import record
from workflows import DEFAULT_DATA, HERE, unpack

CGROUP = Path("/sys/fs/cgroup/memory/imgcls-bench-commands")


def run(argv: list[str]) -> dict:
    """One command in a fresh cgroup without a limit: exit, wall time, the group's peak memory, its log."""
    CGROUP.mkdir(exist_ok=True)
    (CGROUP / "memory.max_usage_in_bytes").write_text("0")
    wrapper = f"echo $$ > {CGROUP}/cgroup.procs && exec {' '.join(argv)}"
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", wrapper], capture_output=True, text=True)
    log = done.stdout + done.stderr
    return {"exit": done.returncode, "wall_s": round(time.perf_counter() - start, 1),
            "peak_mb": round(int((CGROUP / "memory.max_usage_in_bytes").read_text()) / 2**20), "log": log}


def seconds(log: str, pattern: str) -> float | None:
    found = re.findall(pattern, log)
    return round(sum(float(v) for v in found), 2) if found else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--only", default="torchrun,features,check", help="which parts to run")
    args = parser.parse_args()
    only = args.only.split(",")
    root = unpack(Path(args.data), HERE / "data")
    dvc = root / "dogs-vs-cats" / "train"
    imgcls = [sys.executable, "-m", "imgcls"]
    result = {}
    with tempfile.TemporaryDirectory() as work:
        decode = r"(?:decoded \d+ (?:new or changed )?pictures in|while this one waited) ([\d.]+) s"
        for name, extra in (("train, 1 process", ["--nproc", "1"]), ("train --nproc 2", ["--nproc", "2"]),
                            ("train --nproc 2 --no-cache", ["--nproc", "2", "--no-cache"])) if "torchrun" in only else ():
            cache = f"{work}/cache{len(result)}"  # cold: a new cache folder each
            row = run([*imgcls, "train", str(dvc), "--label-pattern", "'^(cat|dog)\\.'", "--model", "simple-cnn",
                       "--model-arg", "width=4", "--channels", "3", "--img-size", "448", "--epochs", "1",
                       "--batch-size", "16", "--train-batches", "20", "--cache-dir", cache,
                       "--out", f"{work}/run{len(result)}", *extra])
            row["decode_s"] = seconds(row["log"], decode)
            result[name] = row
        features = r"frozen-block outputs \(\d+ MB\) ready in ([\d.]+) s"
        head = [*imgcls, "train", str(dvc), "--label-pattern", "'^(cat|dog)\\.'", "--model", "efficientnet_lite0",
                "--pretrained", "--freeze", "backbone", "--img-size", "224", "--epochs", "2", "--cache-dir",
                f"{work}/features"]
        for name in ("frozen features, first command", "frozen features, second command") if "features" in only else ():
            row = run([*head, "--out", f"{work}/run{len(result)}"])
            row["features_s"] = seconds(row["log"], features)
            result[name] = row
        for name in ("check, first", "check, second") if "check" in only else ():
            row = run([*imgcls, "check", str(dvc), "--label-pattern", "'^(cat|dog)\\.'", "--cache-dir", f"{work}/check",
                       "--out", f"{work}/check{len(result)}"])
            result[name] = row
    CGROUP.rmdir()
    for name, row in result.items():
        row["last_line"] = (row.pop("log").strip().splitlines() or [""])[-1][:120]
        print(name, json.dumps(row))
    record("cache_commands", result)


if __name__ == "__main__":
    main()
