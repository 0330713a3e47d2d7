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
