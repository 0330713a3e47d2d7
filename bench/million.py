"""A million pictures (issue 27, part 4): the decoded cache's cold decode, warm lookup, index size and
peak memory, with the data as 1,000 class folders and as 100 WebDataset shards.

The pictures are 16x16 RGB PNGs of noise: 10,000 distinct ones, each written 100 times under
different names (decoding costs the same; writing a million distinct ones would only take longer).
Each measurement runs in its own process, as a command would: `cold` with an empty cache and no kept
listing, `warm` right after it (its listing and index on disk, nothing in memory). With --before
COMMIT, the folder source is also measured with imgcls as of that commit (its own cache folder), in
the same run.

    python bench/million.py [--pictures 1000000] [--before 36a648e]

Writes bench/out/million.json and appends the table to bench/RESULTS.md. The data (~4 GB on disk) is
written under bench/out/million/ once and kept.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "out" / "million"
CLASSES = 1000
SHARDS = 100


def encoded_pool(count: int = 10_000) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(count):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(out, "PNG")
        pool.append(out.getvalue())
    return pool


def write_data(pictures: int) -> dict[str, str]:
    """The class folders and the shards, once (a .complete marker says they are whole)."""
    folder, shards = WORK / f"folder-{pictures}", WORK / f"shards-{pictures}"
    if not (WORK / f".complete-{pictures}").exists():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(shards, ignore_errors=True)
        pool = encoded_pool()
        per_class = pictures // CLASSES
        start = time.perf_counter()
        for c in range(CLASSES):
            target = folder / f"c{c:03d}"
            target.mkdir(parents=True)
            for i in range(per_class):
                (target / f"{i:05d}.png").write_bytes(pool[(c * per_class + i) % len(pool)])
        print(f"wrote {pictures:,} files in {time.perf_counter() - start:.0f} s", flush=True)
        shards.mkdir(parents=True)
        per_shard = pictures // SHARDS
        for s in range(SHARDS):
            with tarfile.open(shards / f"train-{s:06d}.tar", "w") as tar:
                for i in range(s * per_shard, (s + 1) * per_shard):
                    c = i // per_class
                    for suffix, payload in ((".png", pool[i % len(pool)]), (".cls", str(c).encode())):
                        info = tarfile.TarInfo(f"{i:07d}{suffix}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
        print(f"wrote {SHARDS} shards in {time.perf_counter() - start:.0f} s", flush=True)
        (WORK / f".complete-{pictures}").touch()
    # As a user's data would be, older than listing.RACY_NS when listed (a listing of folders changed
    # in the last 2 s is not kept).
    time.sleep(2.5)
    return {"1,000 class folders": str(folder),
            "100 WebDataset shards": str(shards / f"train-{{000000..{SHARDS - 1:06d}}}.tar")}


def phase(source: str, cache: str) -> dict:
    """One command's data stage: list the source and look every picture up in the decoded cache (timed
    after the imports, which a command pays before it reads any data: torch's alone is ~2 s)."""
    from imgcls.data.dataset import decode_samples
    from imgcls.data.sources import load_samples
    from imgcls.data.store import CacheSettings

    start = time.perf_counter()
    samples = load_samples(source)
    listed = time.perf_counter() - start
    decoded, skipped = decode_samples(samples, 3, 16, cache=CacheSettings(cache_dir=cache, max_gb=100))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "listing_s": round(listed, 3), "pictures": len(decoded),
            "skipped": len(skipped), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_phase(source: str, cache: Path, home: Path, src: Path | None = None) -> dict:
    """phase() in a new process (its own peak memory; nothing kept in memory between phases)."""
    env = {**os.environ, "IMGCLS_CACHE_DIR": str(home)}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); from million import phase; "
            f"print(json.dumps(phase({source!r}, {str(cache)!r})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure(name: str, source: str, src: Path | None = None) -> dict:
    cache, home = WORK / f"cache-{name}", WORK / f"home-{name}"  # home: the kept listings
    for folder in (cache, home):
        shutil.rmtree(folder, ignore_errors=True)
    cold = run_phase(source, cache, home, src)
    warm = run_phase(source, cache, home, src)
    entry = next(cache.glob("decoded-*"))
    index = [f for f in entry.iterdir() if f.name.startswith("index")]
    row = {"pictures": cold["pictures"], "cold_s": cold["seconds"],
           "cold_pictures_per_s": round(cold["pictures"] / cold["seconds"]),
           "cold_peak_rss_mb": cold["peak_rss_mb"], "warm_s": warm["seconds"], "warm_listing_s": warm["listing_s"],
           "warm_peak_rss_mb": warm["peak_rss_mb"], "warm_vs_cold": round(cold["seconds"] / warm["seconds"], 1),
           "index_mb": round(sum(f.stat().st_size for f in index) / 2**20, 1),
           "kept_listings_mb": round(folder_bytes(home) / 2**20, 1),
           "pixels_mb": round((entry / "pixels.u8").stat().st_size / 2**20)}
    shutil.rmtree(cache, ignore_errors=True)  # ~0.75 GB each
    return row


def checkout(commit: str) -> Path:
    target = WORK / f"src-{commit}"
    if not target.exists():
        archive = subprocess.run(["git", "archive", commit, "src"], cwd=HERE.parent, check=True,
                                 capture_output=True).stdout
        target.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    return target / "src"


def main() -> None:
    from speed import record

    parser = argparse.ArgumentParser()
    parser.add_argument("--pictures", type=int, default=1_000_000)
    parser.add_argument("--before", help="also measure the folder source with imgcls at this commit")
    args = parser.parse_args()
    sources = write_data(args.pictures)
    result = {}
    for name, source in sources.items():
        result[name] = measure(name.split()[1], source)
        print(name, json.dumps(result[name]), flush=True)
    if args.before:
        name = f"1,000 class folders, imgcls at {args.before}"
        result[name] = measure("before", sources["1,000 class folders"], checkout(args.before))
        print(name, json.dumps(result[name]), flush=True)
    record("million", result)


if __name__ == "__main__":
    main()
