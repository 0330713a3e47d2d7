"""--class-names: integer labels get names in model.json, every CSV and the submission; the data's own
labels still match when the run is evaluated; predict --label-format index writes the number."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from imgcls.cli import main
from imgcls.data.class_names import parse_class_names
from imgcls.errors import UserError

NAMES = ["T-shirt/top", "Trouser", "Pullover"]


@pytest.fixture
def named_run(csv_folder, tmp_path: Path) -> tuple[Path, Path, Path]:
    pictures, labels = csv_folder
    run = tmp_path / "run"
    assert main(["-q", "train", str(pictures), "--labels", str(labels), "--model", "simple-cnn", "--img-size", "16",
                 "--epochs", "1", "--class-names", ",".join(NAMES), "--out", str(run)]) == 0
    return pictures, labels, run


def test_names_reach_model_json_csvs_and_submissions(named_run, tmp_path: Path, capsys):
    pictures, labels, run = named_run
    meta = json.loads((run / "model.json").read_text())
    assert meta["classes"] == NAMES and meta["given_classes"] == ["0", "1", "2"]
    with open(run / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} <= set(NAMES) and "p_Trouser" in rows[0]
    assert (run / "report.html").read_text().count("Pullover") >= 1

    named, indexed = tmp_path / "named.csv", tmp_path / "indexed.csv"
    assert main(["-q", "predict", str(run), str(pictures), "--out", str(named)]) == 0
    assert main(["-q", "predict", str(run), str(pictures), "--out", str(indexed), "--label-format", "index"]) == 0
    with open(named, newline="") as f:
        by_name = {r["id"]: r["label"] for r in csv.DictReader(f)}
    with open(indexed, newline="") as f:
        by_index = {r["id"]: r["label"] for r in csv.DictReader(f)}
    assert set(by_name.values()) <= set(NAMES) and set(by_index.values()) <= {"0", "1", "2"}
    assert all(NAMES[int(by_index[i])] == by_name[i] for i in by_name)

    capsys.readouterr()
    # The CSV still says 0, 1, 2: evaluate matches those through given_classes.
    assert main(["evaluate", str(run), str(pictures), "--labels", str(labels)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["count"] == 30


def test_name_files_one_a_line_or_label_name_rows(tmp_path: Path):
    lines = tmp_path / "names.txt"
    lines.write_text("cat\ndog\n\n")
    assert parse_class_names(str(lines), ["0", "1"]) == ["cat", "dog"]
    rows = tmp_path / "names.csv"
    rows.write_text("label,name\n1,dog\n0,cat\n")
    assert parse_class_names(str(rows), ["0", "1"]) == ["cat", "dog"]
    assert parse_class_names("cat, dog", ["0", "1"]) == ["cat", "dog"]


@pytest.mark.parametrize("spec, message", [
    ("cat,dog", "2 names for 3 classes"),
    ("cat,cat,dog", "an empty or repeated name"),
    ("nonsense", "neither a file nor comma-separated names"),
])
def test_wrong_names_are_one_line_exit_2(csv_folder, tmp_path: Path, capsys, spec, message):
    pictures, labels = csv_folder
    assert main(["train", str(pictures), "--labels", str(labels), "--class-names", spec,
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_csv_naming_labels_the_data_lacks(tmp_path: Path):
    rows = tmp_path / "names.csv"
    rows.write_text("0,cat\n7,dog\n")
    with pytest.raises(UserError, match="labels 7 that the data does not have"):
        parse_class_names(str(rows), ["0", "1"])
