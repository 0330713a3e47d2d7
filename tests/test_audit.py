"""imgcls audit on digits with injected label noise: the flipped pictures must rank at the top."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np

import imgcls
from imgcls.audit import audit, audit_run, confident_learning_flags
from imgcls.config import resolve_config
from imgcls.data.sources import builtin


def noisy_digits(root: Path, fraction: float = 0.05, seed: int = 0) -> set[str]:
    """Copy digits into class folders with `fraction` of the labels moved to another class."""
    rng = np.random.default_rng(seed)
    source = builtin("digits")
    pictures = sorted(source.glob("*/*.png"))
    flipped = set(rng.choice(len(pictures), int(len(pictures) * fraction), replace=False).tolist())
    moved = set()
    for i, path in enumerate(pictures):
        label = int(path.parent.name)
        if i in flipped:
            label = (label + int(rng.integers(1, 10))) % 10
        target = root / str(label) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if i in flipped:
            moved.add(str(target))
    return moved


def test_audit_finds_most_injected_label_noise(tmp_path: Path):
    flipped = noisy_digits(tmp_path / "digits")
    config = resolve_config(overrides={"source": str(tmp_path / "digits"), "img_size": 16, "epochs": 6})
    suspects = audit(config, folds=3, out=tmp_path / "audit")
    assert len(suspects) == 1797
    top = {s["path"] for s in suspects[:len(flipped)]}
    recall = len(top & flipped) / len(flipped)
    assert recall >= 0.7, recall
    flagged = {s["path"] for s in suspects if s["flagged"]}
    assert len(flagged & flipped) / len(flipped) >= 0.8
    assert (tmp_path / "audit" / "suspects.png").is_file()
    assert "<img" in (tmp_path / "audit" / "audit.html").read_text()
    rows = list(csv.DictReader(open(tmp_path / "audit" / "suspects.csv")))
    assert rows[0]["rank"] == "1" and set(rows[0]) >= {"path", "given", "predicted", "p_given", "score"}

    retrained = imgcls.train(source=str(tmp_path / "digits"), exclude=str(tmp_path / "audit" / "suspects.csv"),
                             exclude_top=50, img_size=16, epochs=1, out=str(tmp_path / "clean"))
    data = json.loads((retrained.run_dir / "data.json").read_text())
    assert data["excluded_count"] == 50
    assert sum(data["counts"]["train"].values()) + sum(data["counts"]["val"].values()) == 1797 - 50


def test_audit_of_a_run_uses_its_validation_predictions(tmp_path: Path):
    result = imgcls.train(source="digits", img_size=16, epochs=2, out=str(tmp_path / "run"))
    suspects = audit_run(result.run_dir)
    val_count = json.loads((result.run_dir / "metrics.json").read_text())["validation"]["count"]
    assert len(suspects) == val_count
    assert [s["p_given"] for s in suspects] == sorted(s["p_given"] for s in suspects)
    assert "suspects.png" in (result.run_dir / "report.html").read_text()


def test_confident_learning_flags_the_confidently_other_class():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.1, 0.9], [0.7, 0.3]])
    assert confident_learning_flags(labels, probs).tolist() == [False, False, True, False, False, True]


def test_audit_again_into_the_same_folder_resumes_or_starts_afresh(tmp_path: Path, caplog):
    from .conftest import write_class_folders

    data = write_class_folders(tmp_path / "data", per_class=8)
    config = resolve_config(overrides={"source": str(data), "model": "simple-cnn", "img_size": 16, "epochs": 1})
    out = tmp_path / "audit"
    first = audit(config, folds=2, out=out)
    weights = {k: (out / "folds" / f"fold{k}" / "model.safetensors").stat().st_mtime_ns for k in range(2)}
    # An interrupted second fold: its run folder exists but never finished.
    (out / "folds" / "fold1" / "val_predictions.csv").unlink()
    caplog.set_level("INFO")
    again = audit(config, folds=2, out=out)
    assert "resuming the audit" in caplog.text and "fold 1 of 2 already finished" in caplog.text
    assert (out / "folds" / "fold0" / "model.safetensors").stat().st_mtime_ns == weights[0]  # reused, not retrained
    assert (out / "folds" / "fold1" / "val_predictions.csv").is_file()
    assert [s["path"] for s in again] == [s["path"] for s in first]

    caplog.clear()
    changed = resolve_config(overrides={"source": str(data), "model": "simple-cnn", "img_size": 16, "epochs": 2})
    audit(changed, folds=2, out=out)
    assert "starting afresh" in caplog.text
    assert (out / "folds-previous" / "fold0" / "model.safetensors").is_file()  # moved aside, not deleted
    assert len(list(csv.DictReader(open(out / "folds" / "fold0" / "history.csv")))) == 2
