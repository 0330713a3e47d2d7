"""Every model family through every command, at the smallest input each accepts: train (unfrozen; frozen
with and without the frozen-feature cache), finetune, evaluate, predict --tta, audit RUN_DIR, ONNX export
(onnxruntime within 1e-4 of PyTorch) and serve's predict endpoint. The later commands are given the
finetune folder itself, which stands for its final stage. Then the same family with several labels per
picture: finetune, evaluate, predict, export and serve."""
import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import imgcls
from imgcls.audit import audit_run

from .conftest import TAGS, coloured_picture, folder_snapshot, write_class_folders, write_tagged

# name → (model arguments, side in pixels): the smallest input each family accepts (Inception-v3: 75 px).
FAMILIES = {
    "simple-cnn": ({"width": 4}, 16),
    "lenet5": ({}, 32),
    "cifar-cnn": ({}, 32),
    "airnet": ({"widths": "8,16,16"}, 24),
    "resnet18": ({}, 32),
    "inception_v3": ({}, 75),
    "efficientnet_b0": ({}, 32),
    "mobilenet_v3_small": ({}, 32),
    "convnext_tiny": ({}, 32),
    "efficientnet_lite0": ({}, 32),
    # lenet5 takes 32 px, resnet18 the whole 40: the fusion's antialiased resize runs, also inside the ONNX file.
    "fusion": ({"backbones": "resnet18,lenet5", "head": "16"}, 40),
    # timm's zoo: a CNN split into its stages, and a ViT (one features block) built for 32 px
    "timm/convnext_atto": ({}, 32),
    "timm/vit_tiny_patch16_224": ({"depth": 2}, 32),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("families") / "data", per_class=6, classes=("red", "blue"))


def history(run_dir: Path) -> list[list[float]]:
    with open(run_dir / "history.csv", newline="") as f:
        return [[float(r[k]) for k in ("train_loss", "train_acc", "val_loss", "val_acc")] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> tuple[Path, Path]:
    return write_tagged(tmp_path_factory.mktemp("families-tagged"), count=14)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_through_every_command(family: str, data: Path, tagged: tuple[Path, Path], tmp_path: Path):
    model_args, size = FAMILIES[family]
    before = folder_snapshot(data)
    common = dict(source=str(data), model=family, model_args=model_args, img_size=size, batch_size=4)
    unfrozen = imgcls.train(epochs=1, out=str(tmp_path / "unfrozen"), report=False, **common)
    weights = str(unfrozen.run_dir / "model.safetensors")

    # finetune from the unfrozen run's weights: stage 1 trains the head over cached frozen features,
    # stage 2 the last block of each backbone.
    tuned = imgcls.finetune(weights=weights, stage1_epochs=2, stage2_epochs=1, unfreeze_last=1,
                            out=str(tmp_path / "finetune"), report=False, **common)
    assert (tuned.stage2.run_dir / "model.safetensors").is_file()
    # The same head training without the cache: the same history (the cache changes the speed only).
    uncached = imgcls.train(weights=weights, freeze="backbone", optimizer="sgd", momentum=0.91, scheduler="plateau",
                            lr=0.01, epochs=2, feature_cache=False, split_file=str(tuned.stage1.run_dir / "split.csv"),
                            out=str(tmp_path / "uncached"), report=False, **common)
    cached, full = history(tuned.stage1.run_dir), history(uncached.run_dir)
    assert len(cached) == len(full) == 2
    assert np.allclose(cached, full, atol=1e-4), (cached, full)

    out = tmp_path / "finetune"  # the finetune folder: every later command uses its final stage
    metrics = imgcls.evaluate(out, str(data))
    assert metrics["count"] == 12 and metrics == imgcls.evaluate(tuned.stage2.run_dir, str(data))
    written = imgcls.predict(out, data / "red", tmp_path / "submission.csv", proba="red", tta=True)
    rows = list(csv.DictReader(open(tmp_path / "submission.csv")))
    assert written["written"] == len(rows) == 6 and all(0 <= float(r["label"]) <= 1 for r in rows)
    suspects = audit_run(out)
    assert len(suspects) == len(list(csv.DictReader(open(tuned.stage2.run_dir / "val_predictions.csv"))))
    exported = imgcls.export(out, "onnx")
    assert Path(exported["path"]) == tuned.stage2.run_dir / "model.onnx"
    assert exported["max_rel_diff"] < 1e-4  # of the logits' scale (at least 1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from imgcls.serve import create_app
    picture = io.BytesIO()
    coloured_picture(np.random.default_rng(3), (220, 40, 40), size).save(picture, "PNG")
    answer = TestClient(create_app(out)).post("/predict", files={"file": ("red.png", picture.getvalue(), "image/png")})
    assert answer.status_code == 200
    top = answer.json()["top"]
    assert {t["class"] for t in top} == {"red", "blue"} and sum(t["probability"] for t in top) == pytest.approx(1, abs=1e-4)
    assert folder_snapshot(data) == before
    assert json.loads((out / "finetune.json").read_text())["final"] == "stage2"
    _several_labels(family, weights, tagged, tmp_path / "multi")


def _several_labels(family: str, weights: str, tagged: tuple[Path, Path], tmp_path: Path) -> None:
    """The multi-label task on the same family: finetune's two stages from the single-label run's weights
    (its two-class head left out; the head over cached features, then the last block), evaluate,
    predict, export (sigmoid and thresholds in the contract) and serve."""
    pictures, labels = tagged
    model_args, size = FAMILIES[family]
    out = tmp_path / "finetune"
    settings = dict(source=str(pictures), labels=str(labels), id_col="image_name", label_col="tags", multi_label=True,
                    model=family, model_args=model_args, img_size=size, channels=3, batch_size=4, weights=weights,
                    stage1_epochs=1, stage2_epochs=1, unfreeze_last=1, out=str(out), report=False)
    tuned = imgcls.finetune(**settings)
    again = imgcls.finetune(**settings)  # finished stages are reused, read back by the task's headline figure
    assert (again.stage2.score_name, again.stage2.val_accuracy) == ("micro_f1", tuned.stage2.val_accuracy)
    metrics = imgcls.evaluate(out, str(pictures), labels=str(labels), id_col="image_name", label_col="tags")
    assert metrics["count"] == 14 and 0 <= metrics["mAP"] <= 1 and "micro_f1" in metrics
    imgcls.predict(out, pictures, tmp_path / "tags.csv")
    rows = list(csv.DictReader(open(tmp_path / "tags.csv")))
    assert len(rows) == 14 and all(set(r["tags"].split()) <= set(TAGS) for r in rows)
    exported = imgcls.export(out, "onnx")
    assert exported["max_rel_diff"] < 1e-4
    contract = json.loads(Path(exported["path"] + ".json").read_text())
    assert contract["output"]["activation"] == "sigmoid" and len(contract["output"]["thresholds"]) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from imgcls.serve import create_app
    answer = TestClient(create_app(out)).post("/predict", files={"file": ("p6.png", (pictures / "p6.png").read_bytes(),
                                                                          "image/png")})
    assert answer.status_code == 200 and set(answer.json()["labels"]) <= set(TAGS)
    assert {t["class"] for t in answer.json()["top"]} == set(TAGS)
