"""Answers that know their limits: the out-of-distribution score (a two-class run rejects pictures of a
third kind, through predict, evaluate, serve and export, torch and onnx alike) and conformal sets (their
coverage holds on a synthetic set with known noise); runs from before say why in one line."""
from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.cli import main
from imgcls.openset import conformal
from imgcls.openset.scale import percentile, separation
from imgcls.openset.scores import fit_score

from .conftest import write_class_folders

LEGACY = Path(__file__).parent / "data" / "legacy_v1" / "simple-cnn-run"


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_conformal_sets_keep_their_promise_on_a_set_with_known_noise(level: float):
    """Labels drawn from the model's own probabilities (a calibrated model whose errors are known noise):
    sets calibrated on 3,000 pictures cover 3,000 others within a point and a half of the level."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.5, (6000, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    u = rng.random(6000)
    threshold = conformal.calibrate(probs[:3000], labels[:3000], u[:3000], level)
    sets = conformal.prediction_sets(probs[3000:], u[3000:], threshold)
    measured = conformal.coverage_and_size(sets, labels[3000:])
    assert abs(measured["coverage"] - level) < 0.015, measured
    # adaptive: a confident picture gets a smaller set than an unsure one
    confident = probs[3000:].max(1) > 0.9
    assert sets[confident].sum(1).mean() < sets[~confident].sum(1).mean()
    # the draw is fixed by the picture's pixels
    pictures = rng.integers(0, 256, (3, 1, 4, 4), dtype=np.uint8)
    assert np.array_equal(conformal.uniform_draws(pictures), conformal.uniform_draws(pictures.copy()))


@pytest.mark.parametrize("method", ["msp", "energy", "mahalanobis", "knn"])
def test_each_score_puts_far_features_above_near_ones(method: str):
    rng = np.random.default_rng(1)
    centres = np.array([[4.0, 0, 0, 0], [0, 4.0, 0, 0]])
    labels = rng.integers(0, 2, 400)
    features = centres[labels] + rng.normal(0, 0.5, (400, 4))
    score = fit_score(method, "single-label", features, labels)
    head = torch.nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(centres[:, :4], dtype=torch.float32))
        head.bias.zero_()
    near = torch.tensor(centres[[0, 1]] + 0.1, dtype=torch.float32)
    far = torch.tensor([[0.0, 0, 4.0, 0], [0, 0, 0, 4.0]])
    with torch.no_grad():
        inside, outside = score(near, head(near)), score(far, head(far))
    assert outside.min() > inside.max(), (inside, outside)


def test_scale_and_separation_on_known_values():
    assert percentile(np.array([0.0, 2.5, 9.0]), np.array([1.0, 2.0, 3.0, 4.0])).tolist() == [0.0, 0.5, 1.0]
    perfect = separation(np.array([0.1, 0.2, 0.3]), np.array([0.8, 0.9]))
    assert perfect == {"auroc": 1.0, "fpr95": 0.0}


@pytest.fixture(scope="module")
def two_colours(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A red/blue run (trained with the default score and conformal sets), and green pictures: a third
    kind it never saw. Its outliers to choose on (--outliers) are grey pictures, not the green ones."""
    root = tmp_path_factory.mktemp("openset")
    data = write_class_folders(root / "data", per_class=30, classes=("red", "blue"))
    green = write_class_folders(root / "green", per_class=20, classes=("green",), seed=5) / "green"
    assert main(["-q", "train", str(data), "--model", "simple-cnn", "--img-size", "16", "--epochs", "6",
                 "--batch-size", "8", "--lr", "0.01", "--out", str(root / "run")]) == 0
    return root / "run", data, green


def test_a_two_class_run_answers_unknown_for_a_third_kind(two_colours, tmp_path: Path, capsys):
    run, data, green = two_colours
    card = json.loads((run / "model.json").read_text())
    assert card["format"] == "imgcls-model/3" and card["ood"]["method"] == "mahalanobis" and card["ood"]["threshold"] == 0.95
    assert card["conformal"]["coverage"] == 0.9 and (run / "ood.safetensors").is_file()
    open_set = json.loads((run / "metrics.json").read_text())["open_set"]
    assert open_set["ood"]["validation_rejected"] <= 0.2 and "cross_fitted" in open_set["conformal"]
    page = (run / "report.html").read_text()
    assert "ood.png" in page and "coverage.png" in page and "Out-of-distribution score" in page
    # predict --unknown: green pictures are unknown; the closest class without it; torch and onnx agree
    for backend in ("torch", "onnx"):
        assert main(["-q", "predict", str(run), str(green), "--proba", "--unknown", "--sets", "--backend", backend,
                     "--out", str(tmp_path / f"{backend}.csv")]) == 0
    rows = {b: list(csv.DictReader(open(tmp_path / f"{b}.csv"))) for b in ("torch", "onnx")}
    assert list(rows["onnx"][0]) == ["id", "blue", "red", "ood_score", "set"]
    assert np.allclose([float(r["ood_score"]) for r in rows["onnx"]], [float(r["ood_score"]) for r in rows["torch"]],
                       atol=0.06)  # one validation picture's step on the percentile scale
    assert main(["-q", "predict", str(run), str(green), "--unknown", "--out", str(tmp_path / "labels.csv")]) == 0
    labels = [r["label"] for r in csv.DictReader(open(tmp_path / "labels.csv"))]
    assert labels.count("unknown") >= 18, labels
    assert main(["-q", "predict", str(run), str(green), "--out", str(tmp_path / "closest.csv")]) == 0
    assert {r["label"] for r in csv.DictReader(open(tmp_path / "closest.csv"))} <= {"red", "blue"}
    # evaluate: in-distribution coverage and rejection, and how well the score separates the green ones
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--outliers", str(green)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    ood = printed[2]["ood"]
    assert ood["auroc"] > 0.95 and ood["outliers_rejected"] >= 0.9 and ood["rejected"] <= 0.1
    assert printed[1]["conformal"]["coverage"] >= 0.8
    # export: the score is the graph's second output, its threshold in the contract
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    contract = json.loads((tmp_path / "m.onnx.json").read_text())
    assert contract["ood"]["name"] == "ood_score" and contract["ood"]["threshold"] == card["ood"]["raw_threshold"]
    assert contract["conformal"]["threshold"] == card["conformal"]["threshold"]
    # serve: class unknown with its score; a red picture keeps its class and gets a set
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from imgcls.serve import create_app
    client = TestClient(create_app(run))
    first = sorted(green.iterdir())[0]
    answer = client.post("/predict", files={"file": (first.name, first.read_bytes(), "image/png")}).json()
    assert answer["class"] == "unknown" and answer["unknown"] is True and answer["ood_score"] > 0.95
    assert [t["class"] for t in answer["top"]][:1] != ["unknown"]  # the closest classes still follow
    red = sorted((data / "red").iterdir())[0]
    answer = client.post("/predict", files={"file": (red.name, red.read_bytes(), "image/png")}).json()
    assert answer["class"] == "red" and answer["unknown"] is False and "red" in answer["set"]


def test_outliers_choose_the_score_and_its_threshold(two_colours, tmp_path: Path):
    run, data, green = two_colours
    grey = tmp_path / "grey"
    write_class_folders(tmp_path, per_class=15, classes=("grey",), seed=9)
    assert main(["-q", "train", str(data), "--model", "simple-cnn", "--img-size", "16", "--epochs", "2",
                 "--outliers", str(grey), "--coverage", "none", "--out", str(tmp_path / "run")]) == 0
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    seen = json.loads((tmp_path / "run" / "metrics.json").read_text())["open_set"]["outliers_seen"]
    assert set(seen) == {"msp", "energy", "mahalanobis", "knn"} and card["ood"]["chosen_by"] == "outliers"
    assert seen[card["ood"]["method"]]["auroc"] == max(s["auroc"] for s in seen.values())
    assert "conformal" not in card


def test_the_score_and_its_rate_from_the_command_line(two_colours, tmp_path: Path):
    run, data, green = two_colours
    assert main(["-q", "train", str(data), "--model", "simple-cnn", "--img-size", "16", "--epochs", "1",
                 "--ood", "knn", "--reject-rate", "0.1", "--coverage", "0.8", "--out", str(tmp_path / "run")]) == 0
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["ood"]["method"] == "knn" and card["ood"]["threshold"] == pytest.approx(0.9)
    assert card["conformal"]["coverage"] == 0.8
    assert main(["-q", "train", str(data), "--model", "simple-cnn", "--img-size", "16", "--epochs", "1",
                 "--ood", "none", "--coverage", "none", "--out", str(tmp_path / "bare")]) == 0
    bare = json.loads((tmp_path / "bare" / "model.json").read_text())
    assert "ood" not in bare and "conformal" not in bare and not (tmp_path / "bare" / "ood.safetensors").exists()


def test_mistakes_and_runs_from_before_say_why_in_one_line(two_colours, tmp_path: Path, capsys):
    run, data, green = two_colours
    legacy = tmp_path / "legacy"
    shutil.copytree(LEGACY, legacy)
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, expected in [
            (["predict", str(legacy), str(green), "--sets", "--out", str(tmp_path / "s.csv")], "without conformal"),
            (["evaluate", str(legacy), str(data), "--outliers", str(green)], "without an out-of-distribution score"),
            (["train", str(data), "--coverage", "1.5"], "coverage=1.5"),
            (["train", str(data), "--outliers", str(empty)], "--outliers"),
            (["evaluate", str(run), str(data), "--outliers", str(empty)], "--outliers")]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err and "Traceback" not in err, err
    capsys.readouterr()
    assert main(["predict", str(legacy), str(green), "--unknown", "--out", str(tmp_path / "u.csv")]) == 2
    assert "--unknown" in capsys.readouterr().err
    # a run from before still predicts as it did: no score column
    assert main(["-q", "predict", str(legacy), str(green), "--proba", "--out", str(tmp_path / "old.csv")]) == 0
    assert "ood_score" not in open(tmp_path / "old.csv").readline()
    # a run folder that lost its score's file says so in one line
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "ood.safetensors").unlink()
    assert main(["predict", str(copy), str(green), "--backend", "torch", "--out", str(tmp_path / "c.csv")]) == 2
    assert "ood.safetensors" in capsys.readouterr().err


def test_several_labels_answer_unknown_only_where_no_label_passes(tmp_path: Path):
    """Multi-label: a picture with no label above its threshold and a score beyond the run's is unknown;
    a picture with a label keeps it."""
    from PIL import Image

    from .conftest import write_tagged
    pictures, labels = write_tagged(tmp_path, 48)
    outside = tmp_path / "outside"
    outside.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):  # the grey background with no stripe at all: every training picture has one
        pixels = np.clip(128 + rng.normal(0, 15, (16, 18, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(outside / f"x{i}.png")
    run = tmp_path / "run"
    assert main(["-q", "train", str(pictures), "--labels", str(labels), "--id-col", "image_name", "--label-col", "tags",
                 "--multi-label", "--model", "simple-cnn", "--img-size", "16", "--channels", "3", "--batch-size", "8",
                 "--epochs", "6", "--lr", "0.01", "--out", str(run)]) == 0
    card = json.loads((run / "model.json").read_text())
    assert card["ood"]["method"] == "mahalanobis" and "conformal" not in card  # sets: one class per picture only
    assert main(["-q", "predict", str(run), str(outside), "--proba", "--unknown", "--out", str(tmp_path / "out.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    # 5 of 6: with 48 training pictures one outside picture can sit near the threshold (it did with one
    # thread per process, whose sums round differently)
    beyond = [float(r["ood_score"]) > card["ood"]["threshold"] for r in rows]
    assert sum(beyond) >= 5, ([r["ood_score"] for r in rows], card["ood"]["threshold"])
    assert main(["-q", "predict", str(run), str(outside), "--unknown", "--out", str(tmp_path / "tags.csv")]) == 0
    assert main(["-q", "predict", str(run), str(pictures), "--unknown", "--out", str(tmp_path / "inside.csv")]) == 0
    tags = [r["tags"] for r in csv.DictReader(open(tmp_path / "tags.csv"))]
    assert tags.count("unknown") >= 5, tags
    inside = [r["tags"] for r in csv.DictReader(open(tmp_path / "inside.csv"))]
    assert inside.count("unknown") <= 3
