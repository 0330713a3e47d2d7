import csv

import pytest
import torch

import imgcls
from imgcls.config import TrainConfig
from imgcls.data.augment import PRESETS, BatchAugment, batch_mixer, random_flip, random_translate
from imgcls.errors import UserError


def batch(channels: int, size: int, n: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 80), (1, 72)])
def test_presets_keep_shape_and_dtype_on_grey_and_colour(preset: str, channels: int, size: int):
    x = batch(channels, size)
    y = BatchAugment(preset, size, channels)(x)
    assert y.shape == x.shape and y.dtype == torch.uint8
    if preset == "none":
        assert torch.equal(x, y)
    else:
        assert not torch.equal(x, y)


def test_flip_mirrors_some_pictures_and_leaves_the_rest():
    x = batch(3, 8, 64)
    y = random_flip(x)
    flipped = [torch.equal(a.flip(2), b) and not torch.equal(a, b) for a, b in zip(x, y)]
    same = [torch.equal(a, b) for a, b in zip(x, y)]
    assert all(f or s for f, s in zip(flipped, same)) and 10 < sum(flipped) < 54


def test_translate_is_a_shifted_crop_of_the_padded_picture():
    x = batch(1, 8, 8)
    y = random_translate(x, 2)
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for p, out in zip(padded, y):
        assert any(torch.equal(p[:, dy:dy + 8, dx:dx + 8], out) for dy in range(5) for dx in range(5))


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_are_distributions(mixup: float, cutmix: float):
    mixer = batch_mixer(mixup, cutmix, num_classes=4)
    images = torch.randn(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    torch.manual_seed(1)
    mixed, targets = mixer(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 4)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert (targets.max(1).values < 1).any()  # at least some pictures really are mixed
    assert batch_mixer(0, 0, 4) is None


def test_training_with_augmentation_mixup_and_smoothing(tmp_path):
    result = imgcls.train(source="digits", img_size=16, epochs=6, augment="standard", mixup=0.2, cutmix=1.0,
                          label_smoothing=0.1, out=str(tmp_path / "run"))
    # Ten classes (chance: 0.1); mixed, smoothed and augmented targets still teach the model its digits.
    assert result.val_accuracy > 0.6 and result.val_log_loss < 1.5
    history = list(csv.DictReader(open(result.run_dir / "history.csv")))
    assert len(history) == 6 and float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    assert (result.run_dir / "samples.png").is_file()


@pytest.mark.parametrize("field,value", [("augment", "heavy"), ("mixup", -1.0), ("label_smoothing", 1.0)])
def test_bad_values_are_user_errors(field: str, value):
    config = TrainConfig()
    setattr(config, field, value)
    with pytest.raises(UserError, match="Received"):
        config.validate()
