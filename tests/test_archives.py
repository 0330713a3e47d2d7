"""Pictures inside shards: WebDataset tars (one with a corrupt member, one truncated), parquet files with
Hugging Face's ClassLabel names (one bad row) and a save_to_disk folder, through train, evaluate,
predict and check; the same pictures as a folder and as a tar train identically."""
import csv
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.data.archives import expand_braces
from imgcls.data.sources import load_samples

from .conftest import COLOURS, coloured_picture, folder_snapshot

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CLASSES = ("red", "green", "blue")


def png(rng: np.random.Generator, k: int) -> bytes:
    buffer = io.BytesIO()
    coloured_picture(rng, COLOURS[CLASSES[k]]).save(buffer, "PNG")
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, per_shard: int = 12, shards: int = 2) -> Path:
    """WebDataset shards: <key>.png + <key>.cls (the class index) per sample, plus one sample whose
    picture is garbage, and a third shard cut off in the middle."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(folder / f"train-{s:06d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:02d}{i:04d}"
                add(tar, f"{key}.png", png(rng, i % 3))
                add(tar, f"{key}.cls", str(i % 3).encode())
            if s == 0:
                add(tar, "broken.png", b"not a picture")
                add(tar, "broken.cls", b"1")
    whole = folder / "whole.tar"
    with tarfile.open(whole, "w") as tar:
        for i in range(6):
            add(tar, f"99{i:04d}.png", png(rng, i % 3))
            add(tar, f"99{i:04d}.json", json.dumps({"label": i % 3}).encode())
    data = whole.read_bytes()
    (folder / f"train-{shards:06d}.tar").write_bytes(data[: len(data) // 2])  # truncated mid-shard
    whole.unlink()
    return folder


def test_brace_ranges_expand_as_webdataset_writes_them():
    assert expand_braces("s/train-{000000..000002}.tar") == [f"s/train-{i:06d}.tar" for i in range(3)]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]


def test_webdataset_shards_through_train_evaluate_predict_and_check(tmp_path: Path, caplog):
    shards = write_shards(tmp_path / "shards")
    before = folder_snapshot(shards)
    pattern = str(shards / "train-{000000..000002}.tar")
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="imgcls"):
        assert main(["train", pattern, "--class-names", "red,green,blue", "--model", "simple-cnn", "--img-size", "16",
                     "--channels", "3", "--epochs", "2", "--batch-size", "8", "--out", str(run)]) == 0
    data = json.loads((run / "data.json").read_text())
    assert data["classes"] == list(CLASSES)
    counted = sum(sum(side.values()) for side in data["counts"].values())
    reasons = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
    assert any(name.endswith("::broken.png") for name in reasons), reasons  # listed like a broken file
    assert any("truncated" in r for r in reasons.values()), reasons
    assert 24 <= counted <= 24 + 3  # both whole shards, and what the cut one kept before the damage
    from imgcls.data.store import cache_root
    assert len(list((cache_root() / "shards").glob("*.json"))) >= 3  # each shard's listing, for later commands
    # a second run decodes nothing: the cache is keyed by shard, size, mtime and member
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imgcls"):
        assert main(["train", pattern, "--class-names", "red,green,blue", "--model", "simple-cnn", "--img-size", "16",
                     "--channels", "3", "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "again")]) == 0
    assert any("already decoded" in r.getMessage() or "already cached" in r.getMessage() for r in caplog.records)
    assert main(["evaluate", str(run), str(shards / "train-000001.tar"), "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["count"] == 12
    assert main(["predict", str(run), str(shards / "train-000001.tar"), "--out", str(tmp_path / "s.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["id"] for r in rows] == [f"01{i:04d}" for i in range(12)]
    assert main(["check", pattern, "--out", str(tmp_path / "check")]) == 0
    assert folder_snapshot(shards) == before


def write_parquet(folder: Path, rows: int = 18) -> Path:
    """The hub's layout: data/train-0000K-of-00002.parquet, an Image column ({bytes, path}) and a
    ClassLabel column whose names are in the schema's Hugging Face metadata; row 5 holds garbage."""
    rng = np.random.default_rng(1)
    features = {"image": {"_type": "Image"}, "label": {"names": list(CLASSES), "_type": "ClassLabel"}}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    (folder / "data").mkdir(parents=True)
    half = rows // 2
    for part, span in enumerate((range(0, half), range(half, rows))):
        images = [{"bytes": b"garbage" if i == 5 else png(rng, i % 3), "path": f"{i}.png"} for i in span]
        table = pa.table({"image": images, "label": [i % 3 for i in span]}).replace_schema_metadata(meta)
        pq.write_table(table, folder / "data" / f"train-{part:05d}-of-00002.parquet", row_group_size=4)
    return folder


def test_parquet_with_hugging_face_class_names_and_a_bad_row(tmp_path: Path):
    folder = write_parquet(tmp_path / "hub")
    run = tmp_path / "run"
    assert main(["train", str(folder), "--model", "simple-cnn", "--img-size", "16", "--channels", "3", "--epochs",
                 "2", "--batch-size", "8", "--out", str(run)]) == 0
    data = json.loads((run / "data.json").read_text())
    assert data["classes"] == sorted(CLASSES)  # the names, not 0, 1, 2
    assert any(s["path"].endswith("::image/5") for s in data["skipped"]), data["skipped"]
    assert sum(sum(side.values()) for side in data["counts"].values()) == 17
    assert main(["evaluate", str(run), str(folder), "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["count"] == 17
    # predicting both files: rows numbered through the files, as `datasets` numbers them (no repeated ids)
    assert main(["predict", str(run), str(folder), "--out", str(tmp_path / "s.csv")]) == 0
    assert [r["id"] for r in csv.DictReader(open(tmp_path / "s.csv"))] == [str(i) for i in range(18) if i != 5]


def test_a_save_to_disk_folder(tmp_path: Path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "saved"
    folder.mkdir()
    table = pa.table({"img": [{"bytes": png(rng, i % 3), "path": None} for i in range(12)],
                      "fine_label": [CLASSES[i % 3] for i in range(12)]})
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"img": {"_type": "Image"}}}))
    (folder / "state.json").write_text("{}")
    assert main(["train", str(folder), "--image-col", "img", "--label-col", "fine_label", "--model", "simple-cnn",
                 "--img-size", "16", "--channels", "3", "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "data.json").read_text())["classes"] == sorted(CLASSES)
    assert main(["predict", str(tmp_path / "run"), str(folder), "--image-col", "img", "--out",
                 str(tmp_path / "s.csv")]) == 0
    assert [r["id"] for r in csv.DictReader(open(tmp_path / "s.csv"))] == [str(i) for i in range(12)]


def test_a_label_under_another_json_key(tmp_path: Path):
    rng = np.random.default_rng(4)
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "a.tar", "w") as tar:
        for i in range(6):
            add(tar, f"{i:04d}.png", png(rng, i % 3))
            add(tar, f"{i:04d}.json", json.dumps({"fine": CLASSES[i % 3], "label": 0}).encode())
    samples = load_samples(str(tmp_path / "shards" / "a.tar"), label_key="fine")
    assert samples.classes == sorted(CLASSES) and len(samples) == 6
    assert main(["check", str(tmp_path / "shards" / "a.tar"), "--label-key", "fine", "--out",
                 str(tmp_path / "check")]) == 0


def test_a_folder_and_a_tar_of_the_same_pictures_train_identically(tmp_path: Path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "folder"
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for name in sorted(CLASSES):  # the folder layout's order: classes sorted, then file names
            (folder / name).mkdir(parents=True)
            for i in range(8):
                data = png(rng, CLASSES.index(name))
                (folder / name / f"{i}.png").write_bytes(data)
                add(tar, f"{name}{i}.png", data)
                add(tar, f"{name}{i}.txt", name.encode())
    histories = []
    for source, out in ((folder, "a"), (shard, "b")):
        assert main(["train", str(source), "--model", "simple-cnn", "--img-size", "16", "--channels", "3", "--epochs",
                     "2", "--batch-size", "8", "--seed", "0", "--out", str(tmp_path / out)]) == 0
        with open(tmp_path / out / "history.csv", newline="") as f:
            histories.append([(r["train_loss"], r["val_loss"], r["val_acc"]) for r in csv.DictReader(f)])
    assert histories[0] == histories[1]
