"""A folder's listing kept between commands (data/listing.py) and the cache's binary index
(data/row_index.py), on folders the tests write."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.row_index import INDEX, LEGACY_INDEX, Keys, RowIndex
from imgcls.data.sources import from_csv, from_filenames, from_folder, load_samples
from imgcls.data.store import DecodedStore, cache_root, signatures_of

from .conftest import write_class_folders


PAST_NS = 1_600_000_000 * 10**9


def settle(root: Path) -> None:
    """Date every folder under root to one fixed past time, outside the racy window in which a listing is
    not kept (the same time on every call: a folder's time is what tells a kept listing is still true)."""
    for folder, _, _ in os.walk(root):
        os.utime(folder, ns=(PAST_NS, PAST_NS))


def listed_from_kept(caplog) -> bool:
    return "kept listing" in caplog.text


@pytest.fixture
def settled(tmp_path: Path) -> Path:
    root = write_class_folders(tmp_path / "data", per_class=6)
    settle(root)
    return root


def test_a_kept_listing_is_used_while_no_folder_changes_and_matches_the_disk(settled: Path, caplog, monkeypatch):
    caplog.set_level("INFO")
    cold = from_folder(settled)
    assert not listed_from_kept(caplog)
    caplog.clear()
    warm = from_folder(settled)
    assert listed_from_kept(caplog)
    assert warm.paths == cold.paths and warm.labels.tolist() == cold.labels.tolist() and warm.classes == cold.classes
    assert np.array_equal(warm.signatures, signatures_of(warm.paths))  # what a stat of each says
    # ./data/ and data list the same paths
    monkeypatch.chdir(settled.parent)
    assert from_folder("./data/").paths == from_folder("data").paths == [os.path.relpath(p) for p in cold.paths]


def test_an_added_removed_or_renamed_picture_lists_the_tree_again(settled: Path, caplog):
    from_folder(settled)
    Image.new("RGB", (20, 20), (1, 2, 3)).save(settled / "red" / "new.png")
    (settled / "green" / "0.png").unlink()
    (settled / "blue" / "1.png").rename(settled / "blue" / "renamed.png")
    caplog.set_level("INFO")
    samples = from_folder(settled)
    assert not listed_from_kept(caplog)
    names = {os.path.relpath(p, settled) for p in samples.paths}
    assert {"red/new.png", "blue/renamed.png"} <= names and not names & {"green/0.png", "blue/1.png"}
    assert np.array_equal(samples.signatures, signatures_of(samples.paths))


def test_a_new_class_folder_and_a_new_sub_folder_are_seen(settled: Path):
    from_folder(settled)
    (settled / "black").mkdir()
    Image.new("RGB", (20, 20)).save(settled / "black" / "0.png")
    (settled / "red" / "deeper").mkdir()
    Image.new("RGB", (20, 20)).save(settled / "red" / "deeper" / "0.png")
    samples = from_folder(settled)
    assert "black" in samples.classes
    assert str(settled / "red" / "deeper" / "0.png") in samples.paths


def test_a_picture_rewritten_in_place_is_caught_by_the_sample_check(settled: Path, caplog):
    """Rewriting a file in place leaves its folder's time alone; the stat'ed sample (here every picture)
    notices, and the decoded cache then decodes that picture again."""
    from imgcls.data.dataset import decode_samples
    from imgcls.data.store import CacheSettings

    cache = CacheSettings(cache_dir=str(settled.parent / "cache"))
    first, _ = decode_samples(from_folder(settled), 3, 8, cache=cache)
    settle(settled)
    picture = settled / "red" / "3.png"
    Image.new("RGB", (20, 20), (0, 0, 255)).save(picture)  # opened "wb": same folder entry
    os.utime(picture, ns=(10**9, 10**9))
    settle(settled)
    caplog.set_level("INFO")
    samples = from_folder(settled)
    assert "changed in place" in caplog.text
    again, _ = decode_samples(samples, 3, 8, cache=cache)
    assert "decoded 1 new or changed pictures" in caplog.text
    position = again.paths.index(str(picture))
    assert again.pictures([position])[0, 2].float().mean() > 200  # blue now


def test_a_folder_changed_just_now_is_not_kept(tmp_path: Path, caplog):
    root = write_class_folders(tmp_path / "data", per_class=3)  # written just now: racy
    from_folder(root)
    caplog.set_level("INFO")
    from_folder(root)
    assert not listed_from_kept(caplog)


def test_csv_and_file_name_layouts_and_prediction_listings_are_kept_too(tmp_path: Path, caplog):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i in range(6):
        Image.new("L", (20, 20), i * 40).save(pictures / f"{'cat' if i % 2 else 'dog'}.{i}.png")
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{'cat' if i % 2 else 'dog'}.{i},{i % 2}\n"
                                                                   for i in range(6)))
    settle(pictures)
    for _ in range(2):
        caplog.clear()
        caplog.set_level("INFO")
        by_csv = from_csv(pictures, tmp_path / "labels.csv")
        by_name = from_filenames(pictures, r"^(cat|dog)\.")
    assert listed_from_kept(caplog)
    assert by_csv.labels.tolist() == [0, 1, 0, 1, 0, 1] and by_name.classes == ["cat", "dog"]
    assert np.array_equal(by_csv.signatures, signatures_of(by_csv.paths))
    assert np.array_equal(by_name.signatures, signatures_of(by_name.paths))


def test_a_damaged_kept_listing_is_listed_again(settled: Path):
    cold = from_folder(settled)
    kept = list((cache_root() / "listings").glob("*.npz"))
    assert kept
    for file in kept:
        file.write_bytes(b"damaged")
    assert from_folder(settled).paths == cold.paths


def test_the_index_migrates_a_legacy_json_index_without_decoding_again(tmp_path: Path, caplog):
    root = write_class_folders(tmp_path / "data", per_class=4)
    paths = load_samples(str(root)).paths
    store = DecodedStore(tmp_path / "cache", 3, 8, trim=False)
    rows, _ = store.lookup(paths)
    index = RowIndex.read(store.dir)
    legacy = {**index.settings, "rows": index.rows,
              "pictures": {k: [*s, r, None] for k, s, r in zip(index.keys, index.signatures.tolist(),
                                                              index.row_of.tolist())}}
    (store.dir / INDEX).unlink()
    (store.dir / LEGACY_INDEX).write_text(json.dumps(legacy))  # an entry written by imgcls before this index
    caplog.set_level("INFO")
    again, _ = DecodedStore(tmp_path / "cache", 3, 8, trim=False).lookup(paths)
    assert "all 12 pictures already decoded" in caplog.text and again.tolist() == rows.tolist()
    Image.new("RGB", (20, 20)).save(tmp_path / "data" / "red" / "extra.png")
    DecodedStore(tmp_path / "cache", 3, 8, trim=False).lookup(paths + [str(tmp_path / "data" / "red" / "extra.png")])
    assert (store.dir / INDEX).is_file() and not (store.dir / LEGACY_INDEX).exists()  # written in the new format
    assert RowIndex.read(store.dir).row_of.tolist() == [*rows.tolist(), 12]


def test_the_index_updates_changed_keys_in_place_and_finds_runs_and_scattered_keys():
    index = RowIndex({"format": "x"})
    placed = index.update(["/a", "/b", "/b"], np.array([-1, -1, -1]), np.array([[1, 1], [2, 2], [2, 2]]),
                          np.array([0, -1, -1]), [None, "bad", "bad"])
    assert index.keys == ["/a", "/b"] and placed.tolist() == [0, 1, 1] and index.reasons == {"/b": "bad"}
    positions = index.positions(Keys(["/a", "/b", "/c"]))
    assert positions.tolist() == [0, 1, -1]
    assert index.stale(positions, np.array([[1, 1], [2, 3], [5, 5]])).tolist() == [1, 2]
    index.update(["/b", "/c"], np.array([1, -1]), np.array([[2, 3], [5, 5]]), np.array([1, 2]), [None, None])
    assert index.row_of.tolist() == [0, 1, 2] and index.reasons == {}
    assert index.positions(Keys(["/b", "/c"])).tolist() == [1, 2]  # a run of the index's keys
    assert index.positions(Keys(["/c", "/a"])).tolist() == [2, 0]  # out of order: the dictionary
    nested = RowIndex({"format": "x"})
    nested.update(["/x/a", "/a"], np.array([-1, -1]), np.zeros((2, 2), np.int64), np.array([0, 1]), [None, None])
    assert nested.positions(Keys(["/a"])).tolist() == [1]  # "/a" also ends "/x/a": only a whole key counts
    assert index.stale(np.array([0]), np.array([[-1, -1]])).tolist() == [0]  # a file that cannot be stat'ed


def test_cache_clear_forgets_the_kept_listings(settled: Path, capsys, monkeypatch):
    from imgcls.cli import main

    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(settled.parent / "cache"))  # this test's own cache folder
    from_folder(settled)
    assert list((cache_root() / "listings").glob("*.npz"))
    assert main(["cache", "clear", "--older-than", "1"]) == 0  # kept just now: stays
    assert list((cache_root() / "listings").glob("*.npz"))
    assert main(["cache", "clear"]) == 0
    assert "kept listings" in capsys.readouterr().out and not list((cache_root() / "listings").glob("*.npz"))


def test_a_kept_shard_listing_is_used_while_no_shard_changes(tmp_path: Path, caplog):
    from .test_archives import write_shards

    shards = write_shards(tmp_path / "shards")
    for tar in shards.iterdir():
        os.utime(tar, ns=(PAST_NS, PAST_NS))
    pattern = str(shards / "train-{000000..000002}.tar")
    cold = load_samples(pattern)
    caplog.set_level("INFO")
    warm = load_samples(pattern)
    assert "kept listing" in caplog.text
    assert warm.paths == cold.paths and warm.labels.tolist() == cold.labels.tolist() and warm.skipped == cold.skipped
    assert np.array_equal(warm.signatures, signatures_of(warm.paths))  # each picture: its shard's
    os.utime(shards / "train-000001.tar", ns=(PAST_NS, PAST_NS + 10**9))  # a shard written again
    caplog.clear()
    assert load_samples(pattern).paths == cold.paths and "kept listing" not in caplog.text
