"""Training end to end through the Python API: the run folder, reload + predict, resume, determinism."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls
from imgcls.engine.trainer import Callback
from imgcls.predict import load_run, predict_images

from .conftest import folder_snapshot

RUN_FILES = {"config.yaml", "model.safetensors", "model.json", "history.csv", "metrics.json", "data.json",
             "split.csv", "curves.png", "confusion.png", "samples.png", "val_predictions.png", "report.html",
             "resume.pt", "per_class.png", "reliability.png", "top_losses.png"}


def small_run(data: Path, out: Path, **kw):
    args = dict(source=str(data), model="simple-cnn", img_size=16, channels=3, epochs=3, batch_size=8,
                out=str(out), model_args={"width": 8})
    args.update(kw)
    return imgcls.train(**args)


def test_run_folder_is_complete_and_user_files_untouched(class_folder: Path, tmp_path: Path):
    broken = class_folder / "red" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    before = folder_snapshot(class_folder)
    result = small_run(class_folder, tmp_path / "run", epochs=4)
    run = result.run_dir
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert folder_snapshot(class_folder) == before
    data = json.loads((run / "data.json").read_text())
    assert [s["path"] for s in data["skipped"]] == [str(broken)]
    assert sum(data["counts"]["train"].values()) + sum(data["counts"]["val"].values()) == 36
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == result.best_epoch >= 1
    assert metrics["validation"]["accuracy"] > 0.8  # three colours: easy
    assert set(metrics["validation"]["per_class"]) == {"blue", "green", "red"}
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "train_seconds"}
    assert all(0 < float(r["train_seconds"]) <= float(r["seconds"]) for r in rows)
    meta = json.loads((run / "model.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"] and meta["input_size"] == 16 and meta["channels"] == 3
    assert "<img" in (run / "report.html").read_text()


def test_reload_predicts_the_same_probabilities(class_folder: Path, tmp_path: Path):
    run_dir = small_run(class_folder, tmp_path / "run").run_dir
    split = list(csv.DictReader(open(run_dir / "split.csv")))
    val_paths = [r["path"] for r in split if r["split"] == "val"]
    probs, kept, _ = predict_images(load_run(run_dir), val_paths)
    assert kept == val_paths
    # The run scored its validation set with the same weights: the log loss must match.
    labels = np.array([["blue", "green", "red"].index(r["label"]) for r in split if r["split"] == "val"])
    log_loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1)).mean()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert log_loss == pytest.approx(metrics["validation"]["log_loss"], abs=1e-5)
    again, _, _ = predict_images(load_run(run_dir), val_paths)
    np.testing.assert_allclose(probs, again, atol=1e-6)


class CrashAfter(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer, row, improved):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt("simulated crash")


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(class_folder: Path, tmp_path: Path):
    whole = small_run(class_folder, tmp_path / "whole", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        small_run(class_folder, tmp_path / "crashed", epochs=4, callbacks=[CrashAfter(2)])
    history = (tmp_path / "crashed" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + epochs 1, 2
    resumed = imgcls.train(resume=tmp_path / "crashed")
    rows = list(csv.DictReader(open(resumed.run_dir / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    whole_rows = list(csv.DictReader(open(whole.run_dir / "history.csv")))
    assert len(rows) == len(whole_rows) == 4
    for a, b in zip(rows, whole_rows):  # seeded and deterministic on the CPU: the same numbers
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-5)
    assert resumed.val_log_loss == pytest.approx(whole.val_log_loss, abs=1e-5)


def test_separate_val_folder_and_early_stop(class_folder: Path, tmp_path: Path):
    from .conftest import write_class_folders
    val = write_class_folders(tmp_path / "val", per_class=4, seed=5)
    result = small_run(class_folder, tmp_path / "run", val=str(val), epochs=30, early_stop=1, lr=0.05,
                       optimizer="sgd", scheduler="plateau")
    data = json.loads((result.run_dir / "data.json").read_text())
    assert sum(data["counts"]["val"].values()) == 12 and sum(data["counts"]["train"].values()) == 36
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["epochs_run"] < 30


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_per_batch_schedules(class_folder: Path, tmp_path: Path, scheduler: str):
    result = small_run(class_folder, tmp_path / scheduler, scheduler=scheduler, optimizer="adamw", epochs=2)
    rows = list(csv.DictReader(open(result.run_dir / "history.csv")))
    assert float(rows[1]["lr"]) != float(rows[0]["lr"])


def test_csv_and_filename_layouts_train(csv_folder, filename_folder: Path, tmp_path: Path):
    pictures, labels = csv_folder
    a = imgcls.train(source=str(pictures), labels=str(labels), model="simple-cnn", img_size=16, epochs=1,
                     out=str(tmp_path / "a"), model_args={"width": 4})
    assert json.loads((a.run_dir / "model.json").read_text())["classes"] == ["0", "1", "2"]
    b = imgcls.train(
        source=str(filename_folder), label_pattern=r"^(cat|dog)\.", split="balanced", model="lenet5",
        epochs=1, batch_size=4, optimizer="rmsprop", out=str(tmp_path / "b"))
    counts = json.loads((b.run_dir / "data.json").read_text())["counts"]
    assert counts["train"] == {"cat": 8, "dog": 8} and counts["val"] == {"cat": 2, "dog": 2}


def test_class_names_in_any_language_render(tmp_path: Path, recwarn):
    from .conftest import write_class_folders
    data = write_class_folders(tmp_path / "birds", per_class=6, classes=("麻雀", "鸽子", "喜鹊"))
    result = small_run(data, tmp_path / "run", epochs=1)
    assert json.loads((result.run_dir / "model.json").read_text())["classes"] == sorted(["麻雀", "鸽子", "喜鹊"])
    missing = [w for w in recwarn.list if "missing from font" in str(w.message)]
    assert missing == []
    assert Image.open(result.run_dir / "confusion.png").size[0] > 100


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_run_files_follow_the_users_umask(class_folder: Path, tmp_path: Path, umask: int, mode: int):
    previous = os.umask(umask)
    try:
        result = imgcls.train(source=str(class_folder), model="simple-cnn", img_size=16, epochs=1, out=str(tmp_path / "run"))
        imgcls.predict(result.run_dir, class_folder / "red", tmp_path / "submission.csv")
    finally:
        os.umask(previous)
    written = [p for p in result.run_dir.rglob("*") if p.is_file()] + [tmp_path / "submission.csv"]
    assert len(written) > 10
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(mode)}


@pytest.mark.parametrize("keep", ["best-loss", "best-accuracy", "last"])
def test_keep_chooses_the_epoch_whose_weights_the_run_keeps(class_folder: Path, tmp_path: Path, keep: str):
    from imgcls.cli_parser import build_parser

    assert build_parser().parse_args(["train", str(class_folder), "--keep", keep]).keep == keep
    result = small_run(class_folder, tmp_path / keep, epochs=4, lr=0.05, keep=keep, report=False)
    with open(result.run_dir / "history.csv", newline="") as f:
        history = [(int(r["epoch"]), float(r["val_loss"]), float(r["val_acc"])) for r in csv.DictReader(f)]
    expected = {"best-loss": min(history, key=lambda h: (h[1], h[0]))[0],
                "best-accuracy": min(history, key=lambda h: (-h[2], h[1], h[0]))[0],
                "last": history[-1][0]}[keep]
    assert result.best_epoch == expected
    assert json.loads((result.run_dir / "model.json").read_text())["best_epoch"] == expected
    # the saved weights are that epoch's: their validation loss is the one history recorded for it
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["validation"]["log_loss"] == pytest.approx(dict((h[0], h[1]) for h in history)[expected], abs=2e-3)
