"""Ensembles: predict RUN_A RUN_B ... averages the runs' probabilities (same classes required), and
train --folds K keeps a K-fold ensemble that predict OUT uses whole."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from imgcls.cli import main

from .conftest import write_class_folders


def read(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {row["id"]: float(row["label"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ensemble")
    write_class_folders(root / "data", per_class=8)
    for name, size in (("a", 16), ("b", 20)):  # different input sizes: each run decodes its own way
        assert main(["-q", "train", str(root / "data"), "--model", "simple-cnn", "--img-size", str(size),
                     "--channels", "3", "--epochs", "2", "--out", str(root / name)]) == 0
    return root


def test_ensemble_is_the_mean_of_its_runs(two_runs: Path):
    pictures = two_runs / "data" / "red"
    for name in ("a", "b"):
        assert main(["-q", "predict", str(two_runs / name), str(pictures), "--proba", "red",
                     "--out", str(two_runs / f"{name}.csv")]) == 0
    assert main(["-q", "predict", str(two_runs / "a"), str(two_runs / "b"), str(pictures), "--proba", "red",
                 "--out", str(two_runs / "both.csv")]) == 0
    a, b, both = (read(two_runs / f"{n}.csv") for n in ("a", "b", "both"))
    assert set(both) == set(a) and len(both) == 8
    for key in both:
        assert both[key] == pytest.approx((a[key] + b[key]) / 2, abs=2e-6)


def test_an_ensemble_needs_the_same_classes(two_runs: Path, tmp_path: Path, capsys):
    write_class_folders(tmp_path / "other", per_class=6, classes=("red", "blue"))
    assert main(["-q", "train", str(tmp_path / "other"), "--model", "simple-cnn", "--img-size", "16", "--epochs", "1",
                 "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["predict", str(two_runs / "a"), str(tmp_path / "c"), str(two_runs / "data" / "red"),
                 "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "runs with different classes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


def test_train_folds_keeps_a_k_fold_ensemble(two_runs: Path, tmp_path: Path, capsys, caplog):
    out = tmp_path / "cv"
    assert main(["train", str(two_runs / "data"), "--model", "simple-cnn", "--img-size", "16", "--epochs", "1",
                 "--folds", "3", "--out", str(out)]) == 0
    assert "3 folds: out-of-fold accuracy" in capsys.readouterr().out
    summary = json.loads((out / "folds.json").read_text())
    assert summary["folds"] == ["fold0", "fold1", "fold2"] and summary["out_of_fold"]["count"] == 24
    splits = [{r.split(",")[0] for r in (out / f / "split.csv").read_text().splitlines()[1:] if r.endswith(",val")}
              for f in summary["folds"]]
    assert sum(len(s) for s in splits) == 24 and len(set().union(*splits)) == 24  # each picture validated once
    with caplog.at_level("INFO", logger="imgcls"):
        assert main(["predict", str(out), str(two_runs / "data" / "blue"), "--out", str(tmp_path / "s.csv")]) == 0
    assert any("ensemble of 3 runs" in r.getMessage() for r in caplog.records)
    assert len(read_labels(tmp_path / "s.csv")) == 8


def read_labels(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["id"]: row["label"] for row in csv.DictReader(f)}
