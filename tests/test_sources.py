from pathlib import Path

import numpy as np
import pytest

from imgcls.data.sources import builtin, from_csv, from_filenames, from_folder, list_pictures, load_samples
from imgcls.errors import UserError


def test_class_folders_sorted_and_clutter_ignored(class_folder: Path):
    (class_folder / "red" / ".DS_Store").write_bytes(b"\0\1")
    (class_folder / "red" / "Thumbs.db").write_bytes(b"x")
    (class_folder / "green" / "notes.txt").write_text("not a picture")
    hidden = class_folder / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "x.png").write_bytes(b"junk")
    samples = from_folder(class_folder)
    assert samples.classes == ["blue", "green", "red"]
    assert len(samples) == 36
    assert samples.counts() == {"blue": 12, "green": 12, "red": 12}
    assert all(Path(p).suffix == ".png" for p in samples.paths)
    assert samples.skipped == []


def test_broken_link_is_listed(class_folder: Path):
    (class_folder / "red" / "gone.png").symlink_to(class_folder / "nowhere.png")
    samples = from_folder(class_folder)
    assert {"path": str(class_folder / "red" / "gone.png"), "reason": "broken link"} in samples.skipped


def test_csv_layout_numeric_classes_and_missing_ids(csv_folder):
    pictures, labels = csv_folder
    labels.write_text(labels.read_text() + "999,2\n")  # an id without a picture: skipped, listed
    samples = from_csv(pictures, labels)
    assert samples.classes == ["0", "1", "2"]
    assert len(samples) == 30
    assert [s["reason"] for s in samples.skipped] == ["id in CSV has no picture"]
    assert from_csv(pictures, labels, ext=".png").counts() == samples.counts()


def test_csv_layout_errors(csv_folder):
    pictures, labels = csv_folder
    with pytest.raises(UserError, match="not a column"):
        from_csv(pictures, labels, label_col="category")
    other = labels.with_name("other.csv")
    other.write_text("id,label\n5000,1\n5001,2\n")
    with pytest.raises(UserError, match="none with a picture"):
        from_csv(pictures, other)


def test_label_pattern(filename_folder: Path):
    (filename_folder / "readme.png").write_bytes(b"")  # does not match: skipped and listed
    samples = from_filenames(filename_folder, r"^(cat|dog)\.")
    assert samples.classes == ["cat", "dog"]
    assert samples.counts() == {"cat": 10, "dog": 10}
    assert samples.skipped[0]["reason"] == "file name does not match --label-pattern"
    with pytest.raises(UserError, match="matches no file name"):
        from_filenames(filename_folder, r"^(bird)\.")
    with pytest.raises(UserError, match="without a group"):
        from_filenames(filename_folder, r"^cat")


def test_builtin_digits_is_a_class_folder():
    root = builtin("digits")
    samples = load_samples("digits")
    assert samples.classes == [str(i) for i in range(10)]
    assert len(samples) == 1797
    assert builtin("digits") == root  # written once, then reused


def test_missing_and_empty_folders(tmp_path: Path):
    with pytest.raises(UserError, match="expected an existing folder"):
        from_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no pictures"):
        from_folder(tmp_path / "empty")


def test_pictures_sorted_numerically(tmp_path: Path):
    for name in ("10.png", "2.png", "1.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    paths, _ = list_pictures(tmp_path)
    assert [Path(p).name for p in paths] == ["1.png", "2.png", "10.png", "b.png"]


def test_subset_keeps_classes(class_folder: Path):
    samples = from_folder(class_folder)
    part = samples.subset(np.array([0, 1, 30]))
    assert part.classes == samples.classes and len(part) == 3
