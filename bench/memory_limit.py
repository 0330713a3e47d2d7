"""Training whose decoded pictures are about twice the memory limit (issue 13): Dogs vs. Cats (2,002 JPEGs)
decoded at 640 px is 2.3 GB, under a 1.2 GB limit; `imgcls train` runs inside a cgroup-v1 memory limit (root only) with the
decoded cache (batches read from the memory map) and with --no-cache (one in-memory array).

    sudo python bench/memory_limit.py [--data ../shared/datasets] [--limit-mb 1200]

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
    args = parser.parse_args()
    dvc = unpack(Path(args.data), HERE / "data") / "dogs-vs-cats" / "train"
    result = {}
    with tempfile.TemporaryDirectory() as work:
        base = [sys.executable, "-m", "imgcls", "-q", "train", str(dvc), "--label-pattern", "'^(cat|dog)\\.'",
                "--model", "simple-cnn", "--model-arg", "width=4", "--channels", "3", "--img-size", "640",
                "--epochs", "1", "--batch-size", "8", "--cache-dir", f"{work}/cache"]
        for name, extra in (("decoded cache, cold (decodes into the file)", []),
                            ("decoded cache, warm (a second run)", []),
                            ("--no-cache (one in-memory array)", ["--no-cache"])):
            out = f"{work}/run{len(result)}"
            row = run_limited(base + extra + ["--out", out], args.limit_mb)
            row["decoded_mb"] = 2002 * 3 * 640 * 640 // 2**20
            result[name] = row
            print(name, json.dumps(row))
    CGROUP.rmdir()
    record("memory_limit", result)


if __name__ == "__main__":
    main()
