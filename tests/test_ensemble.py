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


# -- finetune --models: one folder of finetuned members --------------------------------------------------

PATTERN = r"^(cat|dog)\."


@pytest.fixture(scope="module")
def finetuned_pair(tmp_path_factory) -> Path:
    """`finetune --models efficientnet_lite0,efficientnet_lite2` (their packages' ImageNet weights) on a
    small Dogs vs. Cats layout, at 32 px."""
    import numpy as np

    from .conftest import COLOURS, coloured_picture

    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(5)
    for folder, count in (("train", 10), ("test", 3)):
        (root / folder).mkdir()
        for i in range(count):
            coloured_picture(rng, COLOURS["red"], 36).save(root / folder / f"cat.{i}.jpg")
            coloured_picture(rng, COLOURS["blue"], 36).save(root / folder / f"dog.{i}.jpg")
    assert main(["-q", "finetune", str(root / "train"), "--label-pattern", PATTERN, "--split", "balanced",
                 "--models", "efficientnet_lite0,efficientnet_lite2", "--img-size", "32", "--stage1-epochs", "2",
                 "--stage2-epochs", "1", "--batch-size", "8", "--out", str(root / "pair")]) == 0
    return root


def validation(run: Path) -> dict[str, tuple[str, float]]:
    """path → (label, P(dog)) of a run's val_predictions.csv."""
    with open(run / "val_predictions.csv", newline="") as f:
        return {r["path"]: (r["label"], float(r["p_dog"])) for r in csv.DictReader(f)}


def test_finetune_models_keeps_one_folder_of_members_on_one_split(finetuned_pair: Path):
    from sklearn.metrics import log_loss

    pair = finetuned_pair / "pair"
    ensemble = json.loads((pair / "ensemble.json").read_text())
    assert ensemble["members"] == ["efficientnet_lite0", "efficientnet_lite2"]
    lite0, lite2 = (validation(pair / m / "stage2") for m in ensemble["members"])
    assert set(lite0) == set(lite2) and len(lite0) == 4  # one shared, balanced 80/20 split
    assert json.loads((pair / "efficientnet_lite2" / "stage2" / "model.json").read_text())["input_size"] == 32
    # The record's figures are the members' mean on those pictures, alone and with the mirror image
    record = ensemble["tta"]
    paths = sorted(lite0)
    labels = [lite0[p][0] == "dog" for p in paths]
    mean = [(lite0[p][1] + lite2[p][1]) / 2 for p in paths]
    assert record["log_loss"]["1"] == pytest.approx(log_loss(labels, mean, labels=[False, True]), abs=2e-5)
    # Each member chooses its TTA on its own validation log loss, and its own folder keeps that choice
    assert set(record["members"]) == set(record["member_views"]) == {"efficientnet_lite0", "efficientnet_lite2"}
    for name, own in record["members"].items():
        assert record["member_views"][name] == own["views"] == (2 if own["log_loss"]["2"] < own["log_loss"]["1"] else 1)
        assert json.loads((pair / name / "finetune.json").read_text())["tta"] == own
        assert json.loads((pair / name / "stage2" / "metrics.json").read_text())["tta"] == own
    lite0_own = [lite0[p][1] for p in paths]
    assert record["members"]["efficientnet_lite0"]["log_loss"]["1"] == pytest.approx(
        log_loss(labels, lite0_own, labels=[False, True]), abs=2e-5)
    if len(set(record["member_views"].values())) == 1:  # the same choice for all: the ensemble's figure with it
        assert record["log_loss"]["chosen"] == record["log_loss"][str(record["member_views"]["efficientnet_lite0"])]


def test_predict_evaluate_export_and_serve_use_every_member(finetuned_pair: Path, tmp_path: Path, capsys):
    import warnings

    pair, test = finetuned_pair / "pair", finetuned_pair / "test"
    assert main(["-q", "predict", str(pair), str(test), "--proba", "dog", "--out", str(tmp_path / "pair.csv")]) == 0
    # the member folders, each with the TTA it chose: the same answers
    assert main(["-q", "predict", str(pair / "efficientnet_lite0"), str(pair / "efficientnet_lite2"), str(test),
                 "--proba", "dog", "--out", str(tmp_path / "members.csv")]) == 0
    together = read(tmp_path / "pair.csv")
    assert together == read(tmp_path / "members.csv") and len(together) == 6

    capsys.readouterr()
    assert main(["evaluate", str(pair), str(test), "--label-pattern", PATTERN, "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["count"] == 6 and len(metrics["members"]) == 2 and "2 runs averaged" in metrics["backend"]

    assert main(["export", str(pair)]) == 0
    contract = json.loads((pair / "ensemble.onnx.json").read_text())
    assert [m["model"] for m in contract["members"]] == ["efficientnet_lite0/stage2/model.onnx",
                                                         "efficientnet_lite2/stage2/model.onnx"]
    assert all((pair / m["contract"]).is_file() for m in contract["members"])
    chosen = json.loads((pair / "ensemble.json").read_text())["tta"]["member_views"]
    assert [m["tta_views"] for m in contract["members"]] == [chosen["efficientnet_lite0"], chosen["efficientnet_lite2"]]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from starlette.testclient import TestClient
    from imgcls.serve import create_app

    with TestClient(create_app(pair, max_batch=2)) as client:
        assert client.get("/health").json()["architecture"].startswith("ensemble of 2")
        answer = client.post("/predict", files={"file": ("dog.1.jpg", (test / "dog.1.jpg").read_bytes())}).json()
        dog = next(t["probability"] for t in answer["top"] if t["class"] == "dog")
        assert dog == pytest.approx(together["dog.1"], abs=2e-6)
        refused = client.post("/predict?explain=1", files={"file": ("dog.1.jpg", (test / "dog.1.jpg").read_bytes())})
        assert refused.status_code == 400 and "ensemble" in refused.json()["detail"]

    capsys.readouterr()
    assert main(["explain", str(pair), str(test), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "an ensemble of 2 runs" in err and len(err.splitlines()) == 1


def test_each_members_tta_chosen_on_validation_is_the_default(finetuned_pair: Path, tmp_path: Path):
    import shutil

    from imgcls.finetune import record_tta
    from imgcls.predict import evaluate, load_model

    pair, test = tmp_path / "pair", finetuned_pair / "test"
    shutil.copytree(finetuned_pair / "pair", pair)
    marker = json.loads((pair / "ensemble.json").read_text())
    for name, views in (("efficientnet_lite0", 1), ("efficientnet_lite2", 2)):  # as if chosen so on validation
        record_tta(pair / name, {**marker["tta"]["members"][name], "views": views})
    assert [m.default_tta for m in load_model(pair).members] == [1, 2]
    for name, folder, flags in (("default", pair, []), ("two", pair, ["--tta", "2"]), ("one", pair, ["--tta", "1"]),
                                ("lite0", pair / "efficientnet_lite0", ["--tta", "1"]),
                                ("lite2", pair / "efficientnet_lite2", ["--tta", "2"])):
        assert main(["-q", "predict", str(folder), str(test), "--proba", "dog", *flags,
                     "--out", str(tmp_path / f"{name}.csv")]) == 0
    default, two, one, lite0, lite2 = (read(tmp_path / f"{n}.csv") for n in ("default", "two", "one", "lite0", "lite2"))
    assert default != two and default != one
    for key in default:  # Lite0 alone, Lite2 with its mirror image, averaged
        assert default[key] == pytest.approx((lite0[key] + lite2[key]) / 2, abs=2e-6)
    metrics = evaluate(pair, str(test), label_pattern=PATTERN)
    assert metrics["tta"] == [1, 2] and evaluate(pair, str(test), label_pattern=PATTERN, tta=2)["tta"] == 2

    # An ensemble made before the choice per member recorded one choice for all of them
    marker["tta"]["views"] = 2
    (pair / "ensemble.json").write_text(json.dumps(marker))
    assert [m.default_tta for m in load_model(pair).members] == [2, 2]


def test_finetune_models_again_resumes_and_other_settings_are_refused(finetuned_pair: Path, tmp_path: Path, capsys,
                                                                       caplog):
    import shutil

    pair = tmp_path / "pair"
    shutil.copytree(finetuned_pair / "pair", pair)
    shutil.rmtree(pair / "efficientnet_lite2" / "stage2")  # killed during the second member's stage 2
    command = ["finetune", str(finetuned_pair / "train"), "--label-pattern", PATTERN, "--split", "balanced",
               "--models", "efficientnet_lite0,efficientnet_lite2", "--img-size", "32", "--stage1-epochs", "2",
               "--stage2-epochs", "1", "--batch-size", "8", "--out", str(pair)]
    with caplog.at_level("INFO", logger="imgcls"):
        assert main(command) == 0
    said = [r.getMessage() for r in caplog.records]
    assert any("resuming the ensemble" in m for m in said) and sum("already finished" in m for m in said) == 3
    assert (pair / "efficientnet_lite2" / "stage2" / "model.json").is_file()
    capsys.readouterr()
    assert main([*command, "--stage2-epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds an ensemble with other settings" in err and len(err.splitlines()) == 1


def test_finetune_models_refuses_one_model(tmp_path: Path, filename_folder: Path, capsys):
    assert main(["finetune", str(filename_folder), "--label-pattern", PATTERN, "--models", "efficientnet_lite0",
                 "--out", str(tmp_path / "one")]) == 2
    err = capsys.readouterr().err.strip()
    assert "two or more different model names" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "one").exists()
    assert main(["finetune", str(filename_folder), "--label-pattern", PATTERN, "--models", "efficientnet_lite0,nosuch",
                 "--out", str(tmp_path / "two")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'nosuch'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "two").exists()  # refused before the first member trained
