"""The persistent decoded cache (issue 13): decode time of a cold cache, a warm one (a second process on
the same folder) and no cache (in memory), and an epoch's batch reading from the memory map against the
in-memory array. Each phase runs in its own process, as a user's second command would.

    python bench/cache.py [--data ../shared/datasets] [--repeats 3]

Prints a table, writes bench/out/cache.json and appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from speed import record, summary
from workflows import DEFAULT_DATA, HERE, unpack

# One phase in a fresh process: decode (through the cache or not), then read one epoch of batches.
PHASE = """
import json, sys, time, torch
from imgcls.data.sources import load_samples
from imgcls.data.dataset import decode_samples
from imgcls.data.loader import BatchLoader
from imgcls.data.store import CacheSettings
source, pattern, channels, size, cache_dir, enabled = sys.argv[1:7]
samples = load_samples(source, label_pattern=pattern or None)
start = time.perf_counter()
data, _ = decode_samples(samples, int(channels), int(size), cache=CacheSettings(enabled == "1", cache_dir))
decode = time.perf_counter() - start
loader = BatchLoader(data, 256, [0.5] * int(channels), [0.25] * int(channels), shuffle=True,
                     device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
start = time.perf_counter()
for images, labels in loader:
    pass
epoch = time.perf_counter() - start
print(json.dumps({"decode_s": decode, "epoch_read_s": epoch, "pictures": len(data)}))
"""


def phase(source: Path, pattern: str, channels: int, size: int, cache_dir: str, enabled: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", PHASE, str(source), pattern, str(channels), str(size), cache_dir,
                           "1" if enabled else "0"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = unpack(Path(args.data), HERE / "data")
    sets = {"CIFAR-10 train (50,000 JPEGs, 32 px)": (root / "cifar10" / "train", "", 3, 32),
            "Dogs vs. Cats train (2,002 JPEGs, 224 px)": (root / "dogs-vs-cats" / "train", r"^(cat|dog)\.", 3, 224)}
    result = {}
    for name, (source, pattern, channels, size) in sets.items():
        runs = {"cold": [], "warm": [], "memory": [], "epoch_map": [], "epoch_memory": []}
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache_dir:
                cold = phase(source, pattern, channels, size, cache_dir, True)
                warm = phase(source, pattern, channels, size, cache_dir, True)
            memory = phase(source, pattern, channels, size, "", False)
            runs["cold"].append(cold["decode_s"])
            runs["warm"].append(warm["decode_s"])
            runs["memory"].append(memory["decode_s"])
            runs["epoch_map"].append(warm["epoch_read_s"])
            runs["epoch_memory"].append(memory["epoch_read_s"])
        row = {"decode cold s": summary(runs["cold"], 3), "decode warm s": summary(runs["warm"], 3),
               "decode no-cache s": summary(runs["memory"], 3),
               "warm speed-up": round(min(runs["cold"]) / max(runs["warm"]), 1),
               "epoch read, map s": summary(runs["epoch_map"], 3),
               "epoch read, memory s": summary(runs["epoch_memory"], 3)}
        result[name] = row
        print(name, json.dumps({k: (v["median"] if isinstance(v, dict) else v) for k, v in row.items()}))
    record("cache", result)


if __name__ == "__main__":
    main()
