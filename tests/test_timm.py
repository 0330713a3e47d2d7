"""timm's zoo by name (--model timm/<name>): blocks that compose to the model, the pretrained config as
preprocessing, --pretrained from the Hugging Face cache (stand-in weights written here; nothing is
downloaded) or one line offline, --weights in timm's key layout, and what Grad-CAM says of a ViT. The
whole command matrix for a timm CNN and a ViT is in test_families.py."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import imgcls
from imgcls.cli import main
from imgcls.errors import UserError
from imgcls.models.registry import create_model, get_spec

from .conftest import write_class_folders

timm = pytest.importorskip("timm")


def write_hub_cache(home: Path, model_name: str) -> None:
    """A stand-in for `huggingface-cli download timm/<model_name>`: random weights in the hub cache layout."""
    from safetensors.torch import save_file

    repo = home / "hub" / f"models--timm--{model_name}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    state = timm.create_model(model_name, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(repo / "snapshots" / revision / "model.safetensors"))


@pytest.mark.parametrize("name, blocks", [
    ("timm/resnet18", ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4", "pool"]),
    ("timm/convnext_atto", ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "norm_pre", "pool"]),
    ("timm/efficientnet_b0", ["conv_stem", "bn1", *[f"blocks.{i}" for i in range(7)], "conv_head", "bn2", "pool"]),
    ("timm/mobilenetv3_small_100", ["features", "pool"]),
    ("timm/vit_tiny_patch16_224", ["features", "pool"]),
])
def test_blocks_compose_to_the_timm_model(name: str, blocks: list[str]):
    model = create_model(name, 3, 1, 32, **({"depth": 2} if "vit" in name else {})).eval()
    assert [n for n, _ in model.blocks()] == blocks
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model.head(model.body(x)), atol=1e-5)
    # every parameter of the body is in one block, so that freezing the blocks freezes the body
    in_blocks = {id(p) for _, block in model.blocks() for p in block.parameters()}
    assert in_blocks == {id(p) for p in model.body.parameters()}


def test_the_pretrained_config_is_the_preprocessing_and_names_are_checked():
    spec = get_spec("timm/vit_small_patch16_224.augreg_in21k")
    assert spec.input_size == 224 and spec.mean == (0.5, 0.5, 0.5)
    assert spec.pretrained_cfg["crop_pct"] == 0.9 and spec.pretrained_cfg["interpolation"] == "bicubic"
    assert spec.pretrained_cfg["hf_hub_id"] == "timm/vit_small_patch16_224.augreg_in21k"
    with pytest.raises(UserError, match="not a timm architecture.*timm/convnext"):
        get_spec("timm/convnextt_tiny")


def test_pretrained_from_the_hub_cache_and_one_line_offline(tmp_path: Path):
    data = write_class_folders(tmp_path / "data", per_class=4, classes=("red", "blue"))
    write_hub_cache(tmp_path / "hf", "convnext_atto.d2_in1k")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "imgcls", "train", str(data), "--model", "timm/convnext_atto.d2_in1k",
                           "--pretrained", "--freeze", "backbone", "--img-size", "32", "--epochs", "1", "--out", str(run)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded timm/convnext_atto.d2_in1k's pretrained weights" in done.stderr
    card = json.loads((run / "model.json").read_text())
    assert card["architecture"] == "timm/convnext_atto.d2_in1k" and card["resize"] == "crop"
    assert card["pretrained_cfg"]["hf_hub_id"] == "timm/convnext_atto.d2_in1k" and card["mean"][0] == 0.485
    # timm's eval crop: the short side resized to size / crop_pct, the centre kept, by every command
    assert card["crop_fraction"] == card["pretrained_cfg"]["crop_pct"] < 1
    assert main(["predict", str(run), str(data / "red"), "--out", str(tmp_path / "p.csv")]) == 0
    assert json.loads(Path(imgcls.export(run, "onnx")["path"] + ".json").read_text())["crop_fraction"] < 1
    # no cached file and no network (this machine's state): one line at once, naming the file and where
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "imgcls", "train", str(data), "--model", "timm/resnet18.a1_in1k",
                           "--pretrained", "--img-size", "32", "--epochs", "1", "--out", str(tmp_path / "none")],
                          capture_output=True, text=True, env={**env, "HF_HOME": str(tmp_path / "empty")}, timeout=300)
    error = done.stderr.strip().splitlines()[-1]
    if "no network" not in error:
        pytest.skip("this machine reaches huggingface.co")
    assert done.returncode == 2 and "model.safetensors of hf-hub:timm/resnet18.a1_in1k" in error
    assert time.perf_counter() - start < 30


def test_weights_in_timms_key_layout_and_grad_cam_on_a_vit(tmp_path: Path, capsys):
    from safetensors.torch import save_file

    data = write_class_folders(tmp_path / "data", per_class=4, classes=("red", "blue"))
    state = timm.create_model("resnet18", pretrained=False).state_dict()  # timm's names, with its 1000-class fc
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "resnet18.safetensors"))
    model = create_model("timm/resnet18", 2, 3, 32)
    from imgcls.models.backbones import load_weights_file
    load_weights_file(model, tmp_path / "resnet18.safetensors")
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"])

    assert main(["models", "timm/convnext_atto", "--img-size", "64"]) == 0
    listing = capsys.readouterr().out
    assert "blocks (for --unfreeze): stem, stages.0" in listing and "Grad-CAM layer" in listing
    assert main(["models", "timm/vit_tiny_patch16_224", "--img-size", "32"]) == 0
    assert "none (no block gives a feature map" in capsys.readouterr().out
    run = tmp_path / "vit"
    assert main(["train", str(data), "--model", "timm/vit_tiny_patch16_224", "--model-arg", "depth=1", "--img-size",
                 "32", "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["explain", str(run), str(data / "red"), "--out", str(tmp_path / "explained")]) == 2
    error = capsys.readouterr().err.strip()
    assert "spatial" in error and len(error.splitlines()) == 1
