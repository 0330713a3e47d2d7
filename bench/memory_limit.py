"""Training whose decoded pictures are about twice the memory limit (issue 13): Dogs vs. Cats (2,002 JPEGs)
decoded at 640 px is 2.3 GB, under a 1.2 GB limit; `imgcls train` runs inside a cgroup-v1 memory limit (root only) with the
decoded cache (batches read from the memory map) and with --no-cache (one in-memory array). The "order"
phase reads one shuffled epoch of batches from the same 2.3 GB file under the limit, in uniformly random
order and in quasi-random order (blocks of ~8 MB, shuffled within windows: local reads).

    sudo python bench/memory_limit.py [--data ../shared/datasets] [--limit-mb 1200] [--phases train,order]

Prints each run's exit code, wall time and peak memory (memory.max_usage_in_bytes, page cache
included), writes bench/out/memory_limit.json and appends to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from speed import record
from workflows import DEFAULT_DATA, HERE, unpack

CGROUP = Path("/sys/fs/cgroup/memory/imgcls-bench")
EPOCH = """
import json, sys, time, torch
from imgcls.data.sources import load_samples
from imgcls.data.dataset import decode_samples
from imgcls.data.loader import BatchLoader
from imgcls.data.store import CacheSettings
samples = load_samples(sys.argv[1], label_pattern=r"^(cat|dog)\\.")
data, _ = decode_samples(samples, 3, 640, cache=CacheSettings(cache_dir=sys.argv[2]))
loader = BatchLoader(data, 8, [0.5] * 3, [0.25] * 3, shuffle=True, device=torch.device("cpu"),
                     generator=torch.Generator().manual_seed(0), order=sys.argv[3])
start = time.perf_counter()
seen = sum(len(labels) for _, labels in loader)
print(json.dumps({"epoch_read_s": round(time.perf_counter() - start, 1), "pictures": seen}))
"""


def run_limited(argv: list[str], limit_mb: int) -> dict:
    CGROUP.mkdir(exist_ok=True)
    (CGROUP / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
    (CGROUP / "memory.max_usage_in_bytes").write_text("0")
    # The child joins the cgroup before it execs imgcls, so every byte it uses counts.
    wrapper = f"echo $$ > {CGROUP}/cgroup.procs && exec {' '.join(argv)}"
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", wrapper], capture_output=True, text=True)
    return {"exit": done.returncode, "wall_s": round(time.perf_counter() - start, 1),
            "peak_mb": round(int((CGROUP / "memory.max_usage_in_bytes").read_text()) / 2**20),
            "limit_mb": limit_mb, "last_line": ((done.stdout + done.stderr).strip().splitlines() or [""])[-1][:160]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--limit-mb", type=int, default=1200)
    parser.add_argument("--phases", default="train,order")
    args = parser.parse_args()
    phases = args.phases.split(",")
    dvc = unpack(Path(args.data), HERE / "data") / "dogs-vs-cats" / "train"
    result = {}
    with tempfile.TemporaryDirectory() as work:
        base = [sys.executable, "-m", "imgcls", "-q", "train", str(dvc), "--label-pattern", "'^(cat|dog)\\.'",
                "--model", "simple-cnn", "--model-arg", "width=4", "--channels", "3", "--img-size", "640",
                "--epochs", "1", "--batch-size", "8", "--cache-dir", f"{work}/cache"]
        runs = (("decoded cache, cold (decodes into the file)", []), ("decoded cache, warm (a second run)", []),
                ("--no-cache (one in-memory array)", ["--no-cache"]))
        for name, extra in runs if "train" in phases else ():
            out = f"{work}/run{len(result)}"
            row = run_limited(base + extra + ["--out", out], args.limit_mb)
            row["decoded_mb"] = 2002 * 3 * 640 * 640 // 2**20
            result[name] = row
            print(name, json.dumps(row))
        if "order" in phases:
            for order in ("random", "quasi", "random", "quasi"):  # alternating, twice each
                script = [sys.executable, "-c", f"'{EPOCH}'", str(dvc), f"{work}/cache", order]
                row = run_limited(script, args.limit_mb)
                row.update(json.loads(row.pop("last_line")) if row["exit"] == 0 else {})
                name = f"epoch read, {order} order"
                result.setdefault(name, []).append(row)
                print(name, json.dumps(row))
            result = {k: (v if not isinstance(v, list) else {"exit": v[-1]["exit"], "limit_mb": args.limit_mb,
                                                             "peak_mb": max(r["peak_mb"] for r in v),
                                                             "epoch_read_s": [r.get("epoch_read_s") for r in v]})
                      for k, v in result.items()}
    CGROUP.rmdir()
    record("memory_limit", result)


if __name__ == "__main__":
    main()
