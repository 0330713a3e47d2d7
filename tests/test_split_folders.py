"""A dataset root split on disk (train/, val/, test/ of class folders) is read as those splits."""
import csv
import json
from pathlib import Path

import pytest

from imgcls.cli import main
from imgcls.data.split_folders import find_split_folders, for_scoring, for_training
from imgcls.config import DataConfig
from imgcls.errors import UserError

from .conftest import folder_snapshot, write_class_folders

SMALL = ["--model", "simple-cnn", "--img-size", "16", "--batch-size", "8", "--model-arg", "width=8"]


def split_root(root: Path, val_name: str = "val") -> Path:
    write_class_folders(root / "train", per_class=8, seed=0)
    write_class_folders(root / val_name, per_class=3, seed=1)
    write_class_folders(root / "test", per_class=4, seed=2)
    return root


def test_split_folders_found_and_pictures_named_like_splits_stay_classes(tmp_path: Path):
    root = split_root(tmp_path / "flowers", val_name="Valid")
    found = find_split_folders(root)
    assert (found.train, found.val, found.test) == (root / "train", root / "Valid", root / "test")
    data = for_training(DataConfig(source=str(root)))
    assert (data.source, data.val) == (str(root / "train"), str(root / "Valid"))
    assert for_training(DataConfig(source=str(root), folds=3)).val is None  # the folds are the validation
    assert for_scoring(str(root)) == str(root / "test")
    # train/ and test/ holding pictures themselves: two classes, as before
    write_class_folders(tmp_path / "flat", per_class=2, classes=("train", "test"))
    assert find_split_folders(tmp_path / "flat") is None
    # class folders with other names: not split folders
    assert find_split_folders(write_class_folders(tmp_path / "plain", per_class=2)) is None
    assert for_training(DataConfig(source=str(tmp_path / "plain"))).source == str(tmp_path / "plain")


def test_mismatched_or_doubled_splits_are_one_line_errors(tmp_path: Path):
    root = tmp_path / "data"
    write_class_folders(root / "train", per_class=2)
    write_class_folders(root / "val", per_class=2, classes=("red", "green", "purple"))
    with pytest.raises(UserError, match=r"only in train/: blue; only in val/: purple"):
        find_split_folders(root)
    other = tmp_path / "other"
    for name in ("train", "val", "valid"):
        write_class_folders(other / name, per_class=1)
    with pytest.raises(UserError, match="two val folders"):
        find_split_folders(other)


def test_train_evaluate_and_check_a_split_root(tmp_path: Path, capsys, caplog):
    root = split_root(tmp_path / "flowers")
    before = folder_snapshot(root)
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="imgcls"):
        assert main(["train", str(root), *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    assert any("holds split folders" in r.getMessage() for r in caplog.records)
    data = json.loads((run / "data.json").read_text())
    assert data["classes"] == ["blue", "green", "red"]  # the species, not the splits
    assert data["counts"] == {"train": {"blue": 8, "green": 8, "red": 8}, "val": {"blue": 3, "green": 3, "red": 3}}
    with open(run / "split.csv", newline="") as f:
        sides = {row["path"]: row["split"] for row in csv.DictReader(f)}
    assert {Path(p).parts[-3] for p, side in sides.items() if side == "val"} == {"val"}
    assert {Path(p).parts[-3] for p, side in sides.items() if side == "train"} == {"train"}

    metrics = tmp_path / "m.json"
    assert main(["evaluate", str(run), str(root), "--out", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["count"] == 12  # test/: 4 pictures of each of 3 classes

    # a picture copied from train/ into test/ is a leak across the splits
    (root / "test" / "red" / "copy.png").write_bytes((root / "train" / "red" / "0.png").read_bytes())
    assert main(["check", str(root), "--out", str(tmp_path / "check")]) == 0
    with open(tmp_path / "check" / "quality.csv", newline="") as f:
        leaks = {row["path"] for row in csv.DictReader(f) if row["issue"] == "split_leak"}
    assert str(root / "test" / "red" / "copy.png") in leaks
    (root / "test" / "red" / "copy.png").unlink()
    assert folder_snapshot(root) == before


def test_a_split_root_without_test_scores_val_and_mismatch_stops_train(tmp_path: Path, capsys):
    root = tmp_path / "data"
    write_class_folders(root / "train", per_class=2)
    write_class_folders(root / "validation", per_class=2, classes=("red", "green"))
    assert main(["train", str(root), *SMALL, "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "only in train/: blue" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    write_class_folders(root / "validation", per_class=2, classes=("blue",))
    assert for_scoring(str(root)) == str(root / "validation")
