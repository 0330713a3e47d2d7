"""The persistent decoded cache: invalidation, concurrent writers, killed writers, corruption, a full disk,
`imgcls cache` and --no-cache, on pictures the tests write."""
import json
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
from imgcls.data.store import DecodedStore, list_entries

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

    index = json.loads((store.dir / "index.json").read_text())
    (store.dir / "index.json").write_text(json.dumps({**index, "format": "imgcls-decoded/0"}))  # another version
    caplog.clear()
    store.lookup(paths)
    assert "another imgcls version" in caplog.text and "decoded 20 new" in caplog.text
    (store.dir / "index.json").write_text("{not json")
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
