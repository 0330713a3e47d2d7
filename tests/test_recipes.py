"""Recipes (named defaults beneath the YAML file and flags), airnet, and the speed settings (issue 5)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.config import RECIPES, resolve_config
from imgcls.data.decode import probe_pictures
from imgcls.data.sources import builtin
from imgcls.errors import UserError
from imgcls.models.registry import create_model
from imgcls.predict import load_run, predict_images


def test_the_small_recipe_applies_only_when_no_model_is_named(tmp_path: Path):
    default = resolve_config(overrides={"source": "digits"})
    assert default.model == "airnet" and default.scheduler == "onecycle" and default.label_smoothing == 0.1
    named = resolve_config(overrides={"source": "digits", "model": "simple-cnn"})
    assert (named.scheduler, named.label_smoothing, named.optimizer, named.epochs) == ("none", 0.0, "adam", 10)
    # A flag beats the recipe; a YAML file sits between the two.
    settings = tmp_path / "s.yaml"
    settings.write_text("epochs: 3\nlr: 0.01\n")
    config = resolve_config(settings, {"source": "digits", "lr": 0.005})
    assert (config.model, config.epochs, config.lr) == ("airnet", 3, 0.005)
    # A recipe's model arguments stay when one of them is changed.
    speed = resolve_config(overrides={"source": "digits", "recipe": "cifar10-speed", "model_args": {"stem": 8}})
    assert speed.model_args == {**RECIPES["cifar10-speed"]["model_args"], "stem": 8}
    with pytest.raises(UserError, match="recipe"):
        resolve_config(overrides={"source": "digits", "recipe": "fastest"})


def test_probe_finds_the_pictures_shape(tmp_path: Path):
    for i in range(4):
        Image.fromarray(np.full((28, 28), i * 40, np.uint8), "L").save(tmp_path / f"g{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    grey = sorted(str(p) for p in tmp_path.glob("*.png"))
    assert probe_pictures(grey) == (1, 28)
    Image.new("RGB", (40, 30)).save(tmp_path / "c.png")
    assert probe_pictures(grey + [str(tmp_path / "c.png")])[0] == 3


@pytest.mark.parametrize("args", [{}, {"widths": "8,16,16", "second_conv": "1,1,1", "stem": 4, "act": "gelu"}])
def test_airnet_fits_any_size_and_channels(args):
    for channels, size in ((1, 16), (3, 28), (3, 32)):
        model = create_model("airnet", 4, channels, size, **args)
        assert model(torch.randn(2, channels, size, size)).shape == (2, 4)
    with pytest.raises(UserError, match="second_conv"):
        create_model("airnet", 4, widths="8,8", second_conv="1")


def test_default_recipe_trains_at_the_pictures_size_and_predicts(tmp_path: Path):
    """digits are 8x8 greyscale: airnet trains on 1 channel at 16 px (the probe's floor), and the saved
    run predicts the same pictures."""
    result = imgcls.train(source="digits", epochs=3, batch_size=64, out=str(tmp_path / "run"))
    meta = json.loads((result.run_dir / "model.json").read_text())
    assert (meta["architecture"], meta["channels"], meta["input_size"]) == ("airnet", 1, 16)
    assert result.val_accuracy > 0.8
    paths = sorted(str(p) for p in builtin("digits").rglob("*.png"))[::40]
    probs, kept, _ = predict_images(load_run(result.run_dir, "cpu"), paths)
    truth = [int(Path(p).parent.name) for p in kept]
    assert len(kept) == len(paths) and np.mean(probs.argmax(1) == truth) > 0.8


def test_speed_recipe_runs_on_the_cpu_at_small_size(class_folder: Path, tmp_path: Path):
    """cifar10-speed is the GPU recipe; here it runs two small batches. Its torch.compile is left out:
    on this CPU it adds about a minute of compiling (it passed once so) and bf16 is a CUDA matter."""
    assert RECIPES["cifar10-speed"]["compile"] is True
    result = imgcls.train(source=str(class_folder), recipe="cifar10-speed", batch_size=8, epochs=1, train_batches=2,
                          model_args={"widths": "8,16,16"}, compile=False, out=str(tmp_path / "speed"))
    config = json.loads((result.run_dir / "model.json").read_text())["config"]
    assert config["recipe"] == "cifar10-speed" and config["optimizer"] == "sgd"
    assert config["model_args"]["stem"] == 24 and config["model_args"]["widths"] == "8,16,16"
    # --train-batches 2: the one-cycle schedule took exactly two steps (resume.pt holds tensors only).
    state = torch.load(result.run_dir / "resume.pt", weights_only=True)
    assert state["schedule"]["last_epoch"] == 2 and state["schedule"]["total_steps"] == 2
    assert state["model"]["features.stem.0.weight"].shape[0] == 24  # the recipe's stem
    assert 0 < result.val_log_loss < 10
