"""Several labels per picture, end to end: reading label cells, iterative stratification, BCE training,
thresholds chosen on validation and kept in the card, id,tags predictions, metrics, export contract,
onnx and int8, serve, explain, audit, folds and the flags refused in one line."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.data.sources import from_csv
from imgcls.data.splits import split_indices
from imgcls.errors import UserError
from imgcls.tasks.multi_label import MultiLabel, best_f1_threshold

from .conftest import TAGS, write_tagged

TRAIN = ["--id-col", "image_name", "--label-col", "tags", "--multi-label", "--model", "simple-cnn",
         "--img-size", "16", "--channels", "3", "--batch-size", "16"]


@pytest.fixture(scope="module")
def tagged_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("multi")
    pictures, labels = write_tagged(root)
    assert main(["-q", "train", str(pictures), "--labels", str(labels), *TRAIN, "--epochs", "12", "--lr", "0.01",
                 "--out", str(root / "run")]) == 0
    return root / "run", pictures, labels


def test_label_cells_separators_empty_cells_and_mistakes(tmp_path: Path):
    pictures, labels = write_tagged(tmp_path / "a", 12, sep=";")
    samples = from_csv(pictures, labels, "image_name", "tags", multi_label=True, label_sep=";")
    assert samples.classes == list(TAGS) and samples.labels.shape == (12, 3)
    assert samples.labels[0].tolist() == [1, 0, 0] and samples.labels[6].tolist() == [1, 1, 1]
    assert samples.counts() == {t: int(samples.labels[:, k].sum()) for k, t in enumerate(TAGS)}
    text = labels.read_text()
    # an empty cell is a picture of none of the labels; an id listed again with its labels reordered is one picture
    (tmp_path / "more.csv").write_text(text.replace("p1,road\n", "p1,\n") + "p2,road;clear\n")
    again = from_csv(pictures, tmp_path / "more.csv", "image_name", "tags", multi_label=True, label_sep=";")
    assert again.labels[1].tolist() == [0, 0, 0] and len(again) == 12
    (tmp_path / "once.csv").write_text(text.replace("p3,water\n", "p3,water;snow\n"))
    with pytest.raises(UserError, match="label 'snow' on one picture only"):
        from_csv(pictures, tmp_path / "once.csv", "image_name", "tags", multi_label=True, label_sep=";")
    (tmp_path / "one.csv").write_text("image_name,tags\n" + "".join(f"p{i},road\n" for i in range(12)))
    with pytest.raises(UserError, match="1 distinct label"):
        from_csv(pictures, tmp_path / "one.csv", "image_name", "tags", multi_label=True)


def test_iterative_stratification_keeps_every_labels_share():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 5)) < np.array([0.5, 0.3, 0.1, 0.05, 0.6])).astype(np.uint8)
    train, val = split_indices(labels, 0.2, "stratified", seed=3)
    assert len(set(train) | set(val)) == 400 and not set(train) & set(val) and 70 <= len(val) <= 90
    share = labels[val].sum(0) / labels.sum(0)
    assert np.all(np.abs(share - 0.2) < 0.06), share  # rare labels too
    again = split_indices(labels, 0.2, "stratified", seed=3)
    assert np.array_equal(again[1], val)


def test_metrics_and_thresholds_on_known_values():
    task = MultiLabel()
    # one class: the best F1 cut keeps the two positives (0.9, 0.8) and drops 0.3 and 0.1
    assert best_f1_threshold(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(0.55)
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.3], [0.1, 0.6]])

    class Card:
        thresholds, num_classes = [0.5, 0.5], 2
    m = task.metrics(targets, probs, ["a", "b"], Card)
    # predicted: [1,0], [1,1], [0,0], [0,1] → tp 3, fp 1, fn 1
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["exact_match"] == pytest.approx(0.5) and m["hamming_loss"] == pytest.approx(2 / 8)
    assert m["per_class"]["a"]["ap"] == pytest.approx(1.0) and m["per_class"]["b"]["recall"] == pytest.approx(0.5)


def test_train_writes_thresholds_and_every_command_reads_them(tagged_run, tmp_path: Path, capsys):
    run, pictures, labels = tagged_run
    card = json.loads((run / "model.json").read_text())
    assert card["task"] == "multi-label" and card["classes"] == list(TAGS) and len(card["thresholds"]) == 3
    metrics = json.loads((run / "metrics.json").read_text())["validation"]
    assert metrics["mAP"] > 0.9 and set(metrics) >= {"micro_f1", "macro_f1", "exact_match", "hamming_loss"}
    assert (run / "pr_curves.png").stat().st_size > 5000 and "Per label" in (run / "report.html").read_text()
    with open(run / "split.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} >= {"clear", "clear road water"}
    # predict: id,tags with the labels above their thresholds, onnx (auto) and torch alike
    assert main(["-q", "predict", str(run), str(pictures), "--out", str(tmp_path / "auto.csv")]) == 0
    assert main(["-q", "predict", str(run), str(pictures), "--out", str(tmp_path / "torch.csv"),
                 "--backend", "torch"]) == 0
    auto, torch_rows = (list(csv.DictReader(open(tmp_path / f))) for f in ("auto.csv", "torch.csv"))
    assert list(auto[0]) == ["id", "tags"] and [r["tags"] for r in auto] == [r["tags"] for r in torch_rows]
    truth = {r["image_name"]: r["tags"] for r in csv.DictReader(open(labels))}
    assert np.mean([r["tags"] == truth[r["id"]] for r in auto]) > 0.9
    capsys.readouterr()
    assert main(["evaluate", str(run), str(pictures), "--labels", str(labels), "--id-col", "image_name",
                 "--label-col", "tags"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert set(printed) == {"mAP", "micro_f1", "macro_f1", "exact_match", "count"} and printed["count"] == 72
    # export: the contract says sigmoid and the thresholds; int8 scores micro-F1
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "m.onnx"), "--quantize", "int8"]) == 0
    contract = json.loads((tmp_path / "m.onnx.json").read_text())
    assert contract["task"] == "multi-label" and contract["output"]["activation"] == "sigmoid"
    assert contract["output"]["thresholds"] == pytest.approx(card["thresholds"])
    quantized = json.loads((run / "model.int8.onnx.json").read_text())["quantization"]
    assert quantized["score"] == "micro_f1" and quantized["int8"]["micro_f1"] > 0.8
    # imgcls runs: the run listed with its micro-F1 in the acc/F1 column
    from imgcls.experiments import format_runs, list_runs
    rows = list_runs(run.parent)
    assert [r["val_accuracy"] for r in rows if r["path"] == str(run)] == [metrics["micro_f1"]]
    assert "acc/F1" in format_runs(rows)


def test_serve_explain_and_audit_answer_with_labels(tagged_run, tmp_path: Path):
    run, pictures, labels = tagged_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from imgcls.serve import create_app
    answer = TestClient(create_app(run)).post("/predict", files={"file": ("p6.png", (pictures / "p6.png").read_bytes(),
                                                                          "image/png")})
    assert answer.status_code == 200 and sorted(answer.json()["labels"]) == ["clear", "road", "water"]
    assert len(answer.json()["top"]) == 3
    # explain: one heatmap per predicted label
    one = tmp_path / "one"
    one.mkdir()
    (one / "p2.png").write_bytes((pictures / "p2.png").read_bytes())  # clear and road
    assert main(["-q", "explain", str(run), str(one), "--out", str(tmp_path / "explained")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "explained" / "explain.csv")))
    assert sorted(r["class"] for r in rows) == ["clear", "road"]


def test_audit_finds_a_missing_label_and_folds_ensemble(tmp_path: Path):
    pictures, labels = write_tagged(tmp_path / "data", 48)
    noisy = tmp_path / "noisy.csv"
    noisy.write_text(labels.read_text().replace("p6,clear road water\n", "p6,clear road\n"))  # water left out
    assert main(["-q", "audit", str(pictures), "--labels", str(noisy), *TRAIN, "--epochs", "12", "--lr", "0.01",
                 "--folds", "2", "--out", str(tmp_path / "audit")]) == 0
    suspects = list(csv.DictReader(open(tmp_path / "audit" / "suspects.csv")))
    assert {"missing", "spurious"} <= set(suspects[0])
    p6 = next(s for s in suspects if s["path"].endswith("p6.png"))
    assert int(p6["rank"]) <= 3 and p6["missing"] == "water" and p6["flagged"] == "1"
    # the audit's fold models are an ensemble too
    assert main(["-q", "predict", str(tmp_path / "audit"), str(pictures), "--out", str(tmp_path / "ens.csv")]) == 0
    assert list(csv.DictReader(open(tmp_path / "ens.csv")))[0].keys() == {"id", "tags"}


def test_a_balanced_split_is_refused_in_one_line(tmp_path: Path, capsys):
    pictures, labels = write_tagged(tmp_path, 12)
    assert main(["train", str(pictures), "--labels", str(labels), *TRAIN, "--split", "balanced"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgcls: error: Received: --split balanced with --multi-label") and "\n" not in err


def test_mixing_label_vectors_follows_the_pixels():
    """MixUp: the targets mixed in the pixels' proportion; CutMix: in the share of the box's area."""
    import torch
    from imgcls.data.augment import MultiHotMixer
    torch.manual_seed(0)
    images = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]])
    for mixer in (MultiHotMixer(0.4, 0), MultiHotMixer(0, 1.0)):
        for _ in range(5):
            mixed, targets = mixer(images, labels)
            share = float(mixed[0].mean())  # picture 0 is zeros: its mean is the other picture's share
            assert targets[0].tolist() == pytest.approx([1 - share, share, 1 - share], abs=1e-6)
            assert float(mixed[1].mean()) == pytest.approx(1 - share) or mixer.alphas[0][0] == "cutmix"


def test_balanced_sampling_weights_by_the_rarest_label():
    import torch
    from imgcls.data.loader import balanced_weights
    hot = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0]])  # label 0 on 4 pictures, 1 on 1, none on 1
    assert balanced_weights(hot).tolist() == pytest.approx([0.25, 0.25, 0.25, 1.0, 1.0])
    assert balanced_weights(torch.tensor([0, 0, 1])).tolist() == pytest.approx([0.5, 0.5, 1.0])


def test_mixing_sampling_and_per_label_calibration_train_and_predict(tmp_path: Path, capsys):
    """--mixup/--cutmix mix the label vectors, --sampler balanced draws by the rarest label, and
    --calibrate fits one temperature per label whose thresholds move with it: predict decides as before."""
    pictures, labels = write_tagged(tmp_path, 48)
    run = tmp_path / "run"
    assert main(["-q", "train", str(pictures), "--labels", str(labels), *TRAIN, "--epochs", "10", "--lr", "0.01",
                 "--mixup", "0.2", "--cutmix", "1.0", "--sampler", "balanced", "--calibrate", "--calibrate-min-errors", "0", "--out", str(run)]) == 0
    card = json.loads((run / "model.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    temperatures = card["temperature"]
    assert len(temperatures) == 3 and metrics["calibration"]["temperature"] == temperatures
    assert metrics["calibration"]["after"]["log_loss"] <= metrics["calibration"]["before"]["log_loss"] + 1e-9
    page = (run / "report.html").read_text()
    assert "one temperature per label" in page and "worst_pictures.png" in page
    # The thresholds moved with the temperatures: the calibrated run decides the validation pictures as
    # its uncalibrated probabilities (val_predictions.csv) did.
    assert main(["-q", "predict", str(run), str(pictures), "--out", str(tmp_path / "tags.csv"),
                 "--backend", "torch"]) == 0
    decided = {r["id"]: r["tags"] for r in csv.DictReader(open(tmp_path / "tags.csv"))}
    validated = list(csv.DictReader(open(run / "val_predictions.csv")))
    assert [decided[Path(r["path"]).stem] for r in validated] == [r["predicted"] for r in validated]
    # --proba alone: a probability column per label, calibrated alike under onnx and torch
    for backend in ("onnx", "torch"):
        assert main(["-q", "predict", str(run), str(pictures), "--proba", "--backend", backend,
                     "--out", str(tmp_path / f"{backend}.csv")]) == 0
    onnx_rows, torch_rows = (list(csv.DictReader(open(tmp_path / f"{b}.csv"))) for b in ("onnx", "torch"))
    assert list(onnx_rows[0]) == ["id", *TAGS] and len(onnx_rows) == 48
    assert np.allclose([[float(r[t]) for t in TAGS] for r in onnx_rows],
                       [[float(r[t]) for t in TAGS] for r in torch_rows], atol=1e-4)
    contract = json.loads((run / "model.onnx.json").read_text())["output"]
    assert contract["temperature"] == temperatures and "temperature" in contract["postprocess"]


def test_label_separator_from_the_command_line(tmp_path: Path):
    pictures, labels = write_tagged(tmp_path, 24, sep="|")
    run = tmp_path / "run"
    assert main(["-q", "train", str(pictures), "--labels", str(labels), *TRAIN, "--label-sep", "|", "--epochs", "1",
                 "--out", str(run)]) == 0
    assert json.loads((run / "model.json").read_text())["config"]["data"]["label_sep"] == "|"
    assert {r["label"] for r in csv.DictReader(open(run / "split.csv"))} >= {"clear|road|water"}


def test_several_labels_need_a_csv(tmp_path: Path, class_folder: Path, capsys):
    assert main(["train", str(class_folder), "--multi-label"]) == 2
    assert "--multi-label without --labels" in capsys.readouterr().err


def test_training_options_and_resume_with_several_labels(tmp_path: Path):
    """pos_weight (--class-weight balanced), label smoothing, EMA, one --threshold for all, and a run
    killed before its end finished by --resume, each epoch once."""
    pictures, labels = write_tagged(tmp_path, 36)
    run = tmp_path / "run"
    argv = ["-q", "train", str(pictures), "--labels", str(labels), *TRAIN, "--epochs", "3", "--class-weight", "balanced",
            "--label-smoothing", "0.1", "--ema", "--threshold", "0.4", "--out", str(run)]
    assert main(argv) == 0
    card = json.loads((run / "model.json").read_text())
    assert card["thresholds"] == [0.4, 0.4, 0.4]
    history = (run / "history.csv").read_text().splitlines()
    # as if killed after epoch 2: history and resume state of epoch 2 only, no final files
    import torch
    state = torch.load(run / "resume.pt", weights_only=True)
    assert state["train_state"]["epoch"] == 3
    (run / "history.csv").write_text("\n".join(history[:3]) + "\n")
    for name in ("metrics.json", "val_predictions.csv", "report.html"):
        (run / name).unlink()
    state["train_state"]["epoch"] = 2
    state["train_state"]["history"] = state["train_state"]["history"][:2]
    torch.save(state, run / "resume.pt")
    assert main(["-q", "train", "--resume", str(run)]) == 0
    assert len((run / "history.csv").read_text().splitlines()) == 4  # header and epochs 1-3, each once
    assert json.loads((run / "metrics.json").read_text())["task"] == "multi-label"
    assert json.loads((run / "model.json").read_text())["thresholds"] == [0.4, 0.4, 0.4]
