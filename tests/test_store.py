"""The persistent decoded cache: invalidation, concurrent writers, killed writers, corruption, a full disk,
`imgcls cache` and --no-cache, on pictures the tests write."""
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls
from imgcls.data.decode import decode_image
from imgcls.data.row_index import INDEX, RowIndex
from imgcls.data.cache_folder import list_entries
from imgcls.data.store import DecodedStore

from .conftest import folder_snapshot, write_class_folders


def pictures(folder: Path, count: int = 20, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def test_only_new_or_changed_pictures_are_decoded_again(tmp_path: Path, caplog):
    paths = pictures(tmp_path / "pics")
    before = folder_snapshot(tmp_path / "pics")
    store = DecodedStore(tmp_path / "cache", 3, 8, trim=False)
    rows, skipped = store.lookup(paths)
    assert list(rows) == list(range(20)) and skipped == []
    assert np.array_equal(store.array()[5], decode_image(paths[5], 3, 8))

    Image.new("RGB", (20, 20), (9, 200, 9)).save(paths[5])  # a changed picture
    os.utime(paths[5], ns=(1, 1))  # a different modification time, whatever the clock's resolution
    extra = pictures(tmp_path / "more", 2, seed=1)  # two new ones
    caplog.set_level("INFO")
    rows2, _ = store.lookup(paths + extra)
    assert "decoded 3 new or changed pictures" in caplog.text
    assert [r for i, r in enumerate(rows2[:20]) if i != 5] == [r for i, r in enumerate(rows) if i != 5]
    assert np.array_equal(store.array()[rows2[5]], decode_image(paths[5], 3, 8))  # the new pixels
    caplog.clear()
    store.lookup(paths + extra)
    assert "all 22 pictures already decoded" in caplog.text
    assert folder_snapshot(tmp_path / "pics") == {**before, "5.png": Path(paths[5]).read_bytes()}


def _lookup(root: str, paths: list[str], queue) -> None:
    rows, _ = DecodedStore(Path(root), 3, 8, trim=False).lookup(paths)
    queue.put(list(rows))


def test_two_processes_at_once_decode_once(tmp_path: Path):
    paths = pictures(tmp_path / "pics", 300)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_lookup, args=(str(tmp_path / "cache"), paths, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(60)
    assert results[0] == results[1] == list(range(300))
    store = DecodedStore(tmp_path / "cache", 3, 8, trim=False)
    assert (store.dir / "pixels.u8").stat().st_size == 300 * store.row_bytes  # one decode, not two


def test_a_killed_writers_tail_and_damaged_entries_are_never_read_as_pixels(tmp_path: Path, caplog):
    paths = pictures(tmp_path / "pics")
    store = DecodedStore(tmp_path / "cache", 3, 8, trim=False)
    store.lookup(paths[:10])
    pixels = store.dir / "pixels.u8"
    with open(pixels, "ab") as f:  # what a writer killed before it committed its index leaves
        f.write(b"\xff" * store.row_bytes * 3)
    rows, _ = store.lookup(paths)  # the next writer cuts the tail off and appends after the index
    assert list(rows) == list(range(20)) and pixels.stat().st_size == 20 * store.row_bytes
    assert np.array_equal(store.array()[12], decode_image(paths[12], 3, 8))

    caplog.set_level("INFO")
    os.truncate(pixels, 5 * store.row_bytes)  # a truncated file
    rows, _ = store.lookup(paths)
    assert "truncated pixel file; rebuilding" in caplog.text and "decoded 20 new" in caplog.text
    assert np.array_equal(store.array()[rows[19]], decode_image(paths[19], 3, 8))

    index = RowIndex.read(store.dir)
    index.settings["format"] = "imgcls-decoded/0"  # another version
    index.write(store.dir)
    caplog.clear()
    store.lookup(paths)
    assert "another imgcls version" in caplog.text and "decoded 20 new" in caplog.text
    (store.dir / INDEX).write_bytes(b"PK not a zip")
    caplog.clear()
    store.lookup(paths)
    assert "unreadable index" in caplog.text


def test_a_full_disk_is_one_line_and_leaves_no_partial_entry(tmp_path: Path):
    paths = pictures(tmp_path / "pics", 40)
    DecodedStore(tmp_path / "cache", 3, 32, trim=False).lookup(paths[:5])  # a committed part, 15 kB
    # The file-size limit stands in for a full disk: writing past it fails with EFBIG.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
        from imgcls.cli import main
        sys.exit(main(["predict", "{tmp_path / 'run'}", "{tmp_path / 'pics'}", "--out", "{tmp_path / 'p.csv'}",
                       "--cache-dir", "{tmp_path / 'cache'}"]))
    """)
    imgcls.train(source=str(write_class_folders(tmp_path / "data", per_class=4)), model="simple-cnn", img_size=32,
                 channels=3, epochs=1, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "other"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("imgcls: error: Received: a full disk") and "MB needed" in error
    store = DecodedStore(tmp_path / "cache", 3, 32, trim=False)
    assert (store.dir / "pixels.u8").stat().st_size == 5 * store.row_bytes  # the committed part only
    assert store.lookup(paths)[0].tolist() == list(range(40))  # and it is still usable


def test_cache_command_lists_and_clears_and_no_cache_writes_none(tmp_path: Path, capsys):
    from imgcls.cli import main

    data = write_class_folders(tmp_path / "data", per_class=4)
    cache = tmp_path / "cache"
    imgcls.train(source=str(data), model="simple-cnn", img_size=16, epochs=1, out=str(tmp_path / "a"), cache=False,
                 cache_dir=str(cache))
    assert list_entries(cache) == []
    imgcls.train(source=str(data), model="simple-cnn", img_size=16, epochs=1, out=str(tmp_path / "b"),
                 cache_dir=str(cache))
    assert main(["cache", "--cache-dir", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert "1 entries" in listing and "12 pictures" in listing
    assert main(["cache", "clear", "--older-than", "1", "--cache-dir", str(cache)]) == 0
    assert "cleared 0 entries" in capsys.readouterr().out and len(list_entries(cache)) == 1
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "cleared 1 entries" in capsys.readouterr().out and list_entries(cache) == []


def test_training_reads_the_memory_map_and_matches_in_memory_training(tmp_path: Path):
    data = write_class_folders(tmp_path / "data", per_class=6)
    runs = {cache: imgcls.train(source=str(data), model="simple-cnn", img_size=16, epochs=2, cache=cache,
                                out=str(tmp_path / str(cache))) for cache in (True, False)}
    histories = {c: (r.run_dir / "history.csv").read_text().splitlines() for c, r in runs.items()}
    assert len(histories[True]) == 3
    assert [row.split(",")[1:5] for row in histories[True]] == [row.split(",")[1:5] for row in histories[False]]


def test_frozen_features_are_cached_on_disk_and_reused_by_another_process(tmp_path: Path):
    data = write_class_folders(tmp_path / "data", per_class=6)
    base = imgcls.train(source=str(data), model="resnet18", img_size=32, epochs=1, out=str(tmp_path / "base"))
    cache = tmp_path / "cache"
    head = ["train", str(data), "--model", "resnet18", "--img-size", "32", "--epochs", "2", "--freeze", "backbone",
            "--weights", str(base.run_dir / "model.safetensors"), "--cache-dir", str(cache)]
    logs = []
    for name in ("first", "second"):  # two processes, as a user's two commands
        done = subprocess.run([sys.executable, "-m", "imgcls", *head, "--out", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        logs.append(done.stdout + done.stderr)
    assert "computed 15 new or changed pictures" in logs[0]  # the 15 training pictures, then the 3 validation ones
    assert "all 15 pictures already computed" in logs[1] and "all 3 pictures already computed" in logs[1]
    assert [e["name"].split("-")[0] for e in list_entries(cache)] == ["decoded", "features"]
    histories = [(tmp_path / n / "history.csv").read_text().splitlines() for n in ("first", "second")]
    assert [r.split(",")[1:5] for r in histories[0]] == [r.split(",")[1:5] for r in histories[1]]


def test_check_findings_are_cached_and_a_changed_picture_is_read_again(tmp_path: Path, caplog):
    from imgcls.data.quality import scan
    from imgcls.data.sources import load_samples
    from imgcls.data.store import CacheSettings

    data = write_class_folders(tmp_path / "data", per_class=5)
    Image.new("RGB", (40, 40), (255, 255, 255)).save(data / "red" / "white.png")
    (data / "red" / "broken.png").write_bytes(b"not a picture")
    cache = CacheSettings(cache_dir=str(tmp_path / "cache"))
    samples = load_samples(str(data))
    caplog.set_level("INFO")
    first = scan(samples, cache=cache)
    assert "checked 17 new or changed pictures" in caplog.text
    caplog.clear()
    again = scan(samples, cache=cache)
    assert "all 17 pictures already checked" in caplog.text and again == first
    assert uncached_issues(scan(samples, cache=CacheSettings(enabled=False))) == uncached_issues(first)
    Image.new("RGB", (40, 40), (255, 255, 255)).save(data / "green" / "0.png")  # now a copy of white.png
    os.utime(data / "green" / "0.png", ns=(1, 1))
    caplog.clear()
    rows, _ = scan(load_samples(str(data)), cache=cache)  # listed again: a Samples keeps the signatures it was listed with
    assert "checked 1 new or changed pictures" in caplog.text
    assert any(r["issue"] == "conflicting_labels" and r["path"].endswith("green/0.png") for r in rows)


def uncached_issues(result) -> list[tuple]:
    rows, _ = result
    return sorted((r["path"], r["issue"], r["detail"]) for r in rows)


def test_eviction_keeps_an_entry_another_process_holds_and_removes_the_oldest(tmp_path: Path):
    from imgcls.data.cache_folder import evict
    from imgcls.data.locking import entry_lock

    paths = pictures(tmp_path / "pics", 10)
    stores = [DecodedStore(tmp_path / "cache", 3, size, trim=False) for size in (8, 9, 10)]
    for age, store in enumerate(stores):
        store.lookup(paths)
        os.utime(store.dir / INDEX, (1000 + age, 1000 + age))  # 8 px the oldest use, 10 px the newest
    sizes = {e["name"]: e["bytes"] for e in list_entries(tmp_path / "cache")}
    cap = sum(sizes.values()) - sizes[stores[1].dir.name] + 1  # room for all but one entry
    with entry_lock(stores[0].dir, shared=True):  # a reader of the oldest entry, right now
        evict(tmp_path / "cache", max_gb=cap / 2**30, keep=stores[2].dir)
    names = {e["name"] for e in list_entries(tmp_path / "cache")}
    assert names == {stores[0].dir.name, stores[2].dir.name}  # the busy one kept, the next oldest evicted
    rows, _ = stores[0].lookup(paths)  # and the kept one is still whole
    assert np.array_equal(stores[0].array()[rows[3]], decode_image(paths[3], 3, 8))


def test_a_run_without_report_writes_no_plots(tmp_path: Path):
    from imgcls.train import train

    data = write_class_folders(tmp_path / "data", per_class=4)
    result = train(source=str(data), model="simple-cnn", img_size=16, epochs=1, out=str(tmp_path / "run"), report=False)
    written = sorted(p.name for p in result.run_dir.iterdir())
    assert written == ["config.yaml", "data.json", "history.csv", "metrics.json", "model.json", "model.safetensors",
                       "ood.safetensors", "resume.pt", "split.csv", "val_predictions.csv"]


CGROUP = Path("/sys/fs/cgroup/memory")
EPOCH = """
import sys, torch
from pathlib import Path
from imgcls.data.dataset import decode_paths
from imgcls.data.loader import BatchLoader
from imgcls.data.store import CacheSettings
paths = sorted(str(p) for p in Path(sys.argv[1]).rglob("*.png"))
data, _ = decode_paths(paths, [0] * len(paths), 3, 576, cache=CacheSettings(sys.argv[2] == "1", sys.argv[3]))
loader = BatchLoader(data, 8, [0.5] * 3, [0.25] * 3, shuffle=True, device=torch.device("cpu"),
                     generator=torch.Generator().manual_seed(0))
seen = sum(len(labels) for _, labels in loader)
print("quasi" if loader.order.file_rows is not None else "random", seen)
"""


@pytest.mark.skipif(not (os.access(CGROUP, os.W_OK) and (CGROUP / "memory.limit_in_bytes").is_file()),
                    reason="needs root and a cgroup-v1 memory controller")
def test_an_epoch_reads_a_decoded_set_larger_than_the_memory_limit(tmp_path: Path):
    """1,200 pictures decoded at 576 px are 1,194 MB; under a 1,000 MB limit (torch's own pages included)
    the cached set is decoded and read in quasi-random order, and the in-memory path is killed."""
    rng = np.random.default_rng(0)
    for i in range(1200):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    group = CGROUP / f"imgcls-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(1000 * 2**20))
        results = {}
        for cached in ("1", "0"):
            script = f"echo $$ > {group}/cgroup.procs && exec {sys.executable} -c '{EPOCH}' {tmp_path} {cached} {tmp_path}/cache"
            results[cached] = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    finally:
        group.rmdir()
    assert results["1"].returncode == 0, results["1"].stderr[-2000:]
    assert results["1"].stdout.split() == ["quasi", "1200"]
    assert results["0"].returncode == -9 or results["0"].returncode == 137  # the in-memory array: killed
