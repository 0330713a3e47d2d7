"""imgcls explain: Grad-CAM layers for every family, the peak's coordinates in the picture's own pixels,
localisation on pictures whose class is a small object, and the command's outputs and errors."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli import main
from imgcls.data.decode import decode_with_geometry
from imgcls.explain import explain
from imgcls.gradcam import default_layers, explain_batch, peak
from imgcls.models.registry import create_model, get_spec
from imgcls.train import train

from .conftest import write_class_folders, write_object_folders

# Every family's default layer at its own input size: what `imgcls models NAME` prints.
DEFAULT_LAYERS = {
    "simple-cnn": ["1"], "airnet": ["group2"], "lenet5": ["4"], "cifar-cnn": ["9"],
    "efficientnet_lite0": ["blocks.14"], "resnet50": ["layer4"], "inception_v3": ["Mixed_7c"],
    "efficientnet_b0": ["features.8"], "mobilenet_v3_large": ["features.16"], "convnext_tiny": ["features.7"],
    "fusion": ["resnet50.layer4", "inception_v3.Mixed_7c"],
}


@pytest.mark.parametrize("name", sorted(DEFAULT_LAYERS))
def test_every_family_has_a_default_layer_and_a_heatmap(name):
    spec = get_spec(name)
    size = spec.size_for({})
    torch.manual_seed(0)
    model = create_model(name, 3).eval()
    assert default_layers(model, spec.channels, size) == DEFAULT_LAYERS[name]
    # The heatmap at a smaller input (its own default layers there): the same code, a fraction of the time.
    size = min(size, 96)
    model = create_model(name, 3, img_size=size).eval()
    layers = default_layers(model, spec.channels, size)
    images = torch.randn(2, spec.channels, size, size)
    result = explain_batch(model, images, layers)
    assert result.heatmaps.shape == (2, size, size)
    assert np.isfinite(result.heatmaps).all() and result.heatmaps.min() >= 0 and result.heatmaps.max() <= 1
    assert result.probs.shape == (2, 3) and np.allclose(result.probs.sum(1), 1, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # only the input's gradient path ran


def test_peak_maps_back_to_the_picture_after_trim_and_resize(tmp_path):
    # A 120x80 picture: white margins around a grey 60x60 content box at (40, 10); one dark dot in it.
    picture = np.full((80, 120), 255, dtype=np.uint8)
    picture[10:70, 40:100] = 128
    picture[52:54, 73:75] = 0  # the dot covers pixels 73-74, 52-53: centre (73.5, 52.5)
    path = tmp_path / "bordered.png"
    Image.fromarray(picture, "L").save(path)
    array, geometry = decode_with_geometry(str(path), 1, 30, trim=True)
    assert (geometry.width, geometry.height) == (120, 80)
    assert geometry.box == (40, 10, 100, 70)
    x, y = peak(255.0 - array[0].astype(np.float32))  # the darkest input pixel: a known peak
    px, py = geometry.to_picture(x, y, 30)
    assert abs(px - 73.5) <= 1.0 and abs(py - 52.5) <= 1.0
    # Without trimming the whole picture is squashed into the input; the mapping follows.
    array, geometry = decode_with_geometry(str(path), 1, 30, trim=False)
    x, y = peak(255.0 - array[0].astype(np.float32))
    px, py = geometry.to_picture(x, y, 30)
    assert geometry.box == (0, 0, 120, 80) and abs(px - 73.5) <= 2.0 and abs(py - 52.5) <= 1.5


def test_peak_mapping_of_a_drafted_jpeg(tmp_path):
    # A large JPEG decodes at a reduced scale (draft); the box must still come out in full-size pixels.
    picture = np.full((600, 800, 3), 90, dtype=np.uint8)
    picture[400:420, 200:220] = 250
    path = tmp_path / "large.jpg"
    Image.fromarray(picture, "RGB").save(path, quality=95)
    array, geometry = decode_with_geometry(str(path), 3, 40)
    assert (geometry.width, geometry.height) == (800, 600) and geometry.box == (0, 0, 800, 600)
    x, y = peak(array.astype(np.float32).sum(0))
    px, py = geometry.to_picture(x, y, 40)
    assert 195 <= px <= 225 and 395 <= py <= 425


def test_gradcam_peak_falls_on_the_object(tmp_path):
    """The class is decided only by a small shape at a random place: a trained model's peak must fall on
    it (3 px margin) for >= 80 % of the correctly classified validation pictures."""
    boxes = write_object_folders(tmp_path / "data", per_class=150)
    result = train(source=str(tmp_path / "data"), epochs=12, batch_size=32, out=str(tmp_path / "run"), report=False)
    assert result.val_accuracy >= 0.9
    with open(tmp_path / "run" / "val_predictions.csv", newline="") as f:
        truth = {row["path"]: row["label"] for row in csv.DictReader(f)}
    pictures = tmp_path / "val"
    pictures.mkdir()
    for i, path in enumerate(truth):  # the validation pictures, under names that keep their class
        Image.open(path).save(pictures / f"{i}.png")
    names = {str(pictures / f"{i}.png"): path for i, path in enumerate(truth)}
    explain(tmp_path / "run", pictures, tmp_path / "explained")
    with open(tmp_path / "explained" / "explain.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    correct = [r for r in rows if r["predicted"] == truth[names[r["path"]]]]
    hits = 0
    for row in correct:
        left, top, right, bottom = boxes[names[row["path"]]]
        x, y = float(row["peak_x"]), float(row["peak_y"])
        hits += left - 3 <= x <= right - 1 + 3 and top - 3 <= y <= bottom - 1 + 3
    assert len(correct) >= 0.9 * len(rows) and hits / len(correct) >= 0.8


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("explain")
    write_class_folders(root / "data", per_class=10)
    train(source=str(root / "data"), model="simple-cnn", img_size=20, epochs=2, out=str(root / "run"), report=False)
    return root


def test_explain_command_writes_overlays_sheet_and_csv(colour_run, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name in ("red", "blue"):
        Image.open(colour_run / "data" / name / "0.png").resize((40, 30)).save(pictures / f"{name}.png")
    (pictures / "broken.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    assert main(["explain", str(colour_run / "run"), str(pictures), "--out", str(out), "--top", "2",
                 "--method", "gradcam++"]) == 0
    assert "explained 2 pictures (gradcam++ on 0)" in capsys.readouterr().out  # 20 px: the 10x10 block, "0"
    with open(out / "explain.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2", "1", "2"]
    assert rows[0]["class"] == rows[0]["predicted"] and rows[1]["class"] != rows[1]["predicted"]
    for row in rows:
        assert 0 <= float(row["peak_x"]) < 40 and 0 <= float(row["peak_y"]) < 30  # the picture's own pixels
        overlay = Image.open(out / row["heatmap"])
        assert overlay.size == (40, 30) and overlay.mode == "RGB"
    assert Image.open(out / "contact.png").size[0] > 100
    assert sorted(p.name for p in pictures.iterdir()) == ["blue.png", "broken.png", "red.png"]  # untouched


@pytest.mark.parametrize("flags, message", [
    (["--layer", "layer9"], "Received: --layer layer9"),
    (["--class", "purple"], "Received: --class 'purple'"),
    (["--top", "0"], "Received: --top 0"),
])
def test_explain_mistakes_are_one_line(colour_run, tmp_path, capsys, flags, message):
    pictures = colour_run / "data" / "red"
    assert main(["explain", str(colour_run / "run"), str(pictures), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_explain_refuses_to_write_among_the_pictures(colour_run, capsys):
    pictures = colour_run / "data" / "red"
    assert main(["explain", str(colour_run / "run"), str(pictures), "--out", str(pictures / "heat")]) == 2
    assert "inside PICTURES" in capsys.readouterr().err
    assert not (pictures / "heat").exists()


def test_explain_a_chosen_class_and_layer(colour_run, tmp_path):
    result = explain(colour_run / "run", colour_run / "data" / "red", tmp_path / "o", class_name="blue", layer="1",
                     method="gradcam")
    assert result["layers"] == ["1"] and result["method"] == ["gradcam"]
    with open(tmp_path / "o" / "explain.csv", newline="") as f:
        assert {row["class"] for row in csv.DictReader(f)} == {"blue"}
