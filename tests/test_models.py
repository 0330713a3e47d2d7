import pytest
import torch

from imgcls.errors import UserError
from imgcls.models.registry import create_model, list_models, register
from imgcls.models.summary import format_summary, summarize

SMALL = {"simple-cnn": 16, "lenet5": 32, "cifar-cnn": 32, "inception_v3": 80, "fusion": 80}


@pytest.mark.parametrize("spec", list_models(), ids=lambda s: s.name)
def test_every_model_runs_forward_and_backward(spec):
    size = SMALL.get(spec.name, 32)
    model = create_model(spec.name, num_classes=5, img_size=size)
    x = torch.randn(2, spec.channels, size, size)
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features)
    model.reset_classifier(7)
    assert model.forward_head(features).shape == (2, 7)


def test_channels_can_differ_from_the_default():
    model = create_model("simple-cnn", 3, in_chans=3, img_size=16)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    assert create_model("resnet50", 2, in_chans=1)(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_walkthrough_width_and_summary():
    model = create_model("simple-cnn", 10, width=4)
    rows = summarize(model, 1, 28)
    assert rows[0]["output"] == (1, 4, 28, 28)
    assert rows[-1]["output"] == (1, 10) and rows[-1]["params"] == 4 * 7 * 7 * 10 + 10
    assert "Total params" in format_summary(rows, model)


def test_registry_errors():
    with pytest.raises(UserError, match="expected one of"):
        create_model("resnet9000", 2)
    with pytest.raises(ValueError, match="twice"):
        register("simple-cnn", description="", input_size=8, channels=1, mean=(0,), std=(1,))(lambda **k: None)
    with pytest.raises(UserError):
        create_model("lenet5", 2, img_size=16)


def test_the_torch_free_listing_matches_the_registry():
    from imgcls.models.catalogue import LISTING

    specs = list_models()
    assert [e.name for e in LISTING] == [s.name for s in specs]
    for entry, spec in zip(LISTING, specs):
        model = create_model(spec.name, 10)
        assert entry.params == sum(p.numel() for p in model.parameters()), spec.name
        shape = "pictures'" if spec.fits_pictures else f"{spec.input_size}x{spec.input_size}x{spec.channels}"
        assert entry.input == shape and entry.description == spec.description, spec.name


def test_the_whitening_layer_makes_its_training_patches_covariance_the_identity(tmp_path):
    import json

    import torch

    from imgcls.cli import main
    from imgcls.models.registry import create_model

    from .conftest import write_class_folders

    torch.manual_seed(0)
    mixing = torch.randn(12, 12)  # correlated pixels, as in photos
    pictures = (torch.randn(4000, 12) @ mixing).reshape(4000, 3, 2, 2)  # 2x2 pictures: one patch each
    model = create_model("airnet", 10, 3, 32, whiten=1)
    model.fit_whitening(pictures, eps=0.0)
    conv = model.features.whiten[0]
    assert not conv.weight.requires_grad and conv.bias.requires_grad  # the filters stay fitted, the bias trains
    out = torch.nn.functional.conv2d(pictures, conv.weight[:12]).reshape(-1, 12)  # one output pixel per 2x2 picture
    covariance = out.T @ out / len(out)
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)
    assert torch.equal(conv.weight[12:], -conv.weight[:12])  # and the negatives (airbench's 2x the channels)

    # end to end: fitted at the start of a run, saved with the weights, used as saved by predict
    data = write_class_folders(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    assert main(["train", str(data), "--model", "airnet", "--model-arg", "whiten=1", "--model-arg", "widths=8,16",
                 "--model-arg", "second_conv=0,0", "--img-size", "16", "--epochs", "1", "--out", str(run)]) == 0
    from safetensors.torch import load_file
    saved = load_file(str(run / "model.safetensors"))["features.whiten.0.weight"]
    assert saved.abs().sum() > 0 and torch.equal(saved[:12], -saved[12:])
    assert json.loads((run / "model.json").read_text())["model_args"]["whiten"] == 1
