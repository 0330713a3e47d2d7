"""The learning-rate finder: fastai's valley on a known curve, the command's outputs, and train --lr auto
recording its choice (weights put back before training starts)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from imgcls.cli import main
from imgcls.lr_find import range_test, valley


def test_valley_sits_half_way_down_the_longest_descent():
    lrs = list(np.logspace(-7, 1, 100))
    # flat, then a steady descent from lr index 30 to 80, then divergence
    losses = [2.0] * 30 + list(np.linspace(2.0, 0.5, 50)) + list(np.linspace(0.6, 5.0, 20))
    suggestion = valley(lrs, losses)
    index = lrs.index(suggestion)
    assert 50 <= index <= 60  # fastai: start + a third + a sixth: half way down the valley


def test_valley_ignores_the_noise_of_the_flat_start():
    # Before the loss begins to fall, noise alone makes "decreasing" points; fastai's longest descent
    # starts among them (index 63-65 here) and the suggestion slides up the flat part. It must sit half
    # way down the fall itself: 50 + 40 / 2.
    rng = np.random.default_rng(0)
    lrs = list(np.logspace(-7, 1, 100))
    noise = np.convolve(rng.standard_normal(60), np.ones(10) / 10, "valid")[:50]  # smoothed, as recorded
    losses = list(2.0 + 0.02 * noise) + list(np.linspace(1.95, 0.5, 40)) + [0.6 + i for i in range(10)]
    assert 67 <= lrs.index(valley(lrs, losses)) <= 71


def test_lr_find_command_writes_the_curve_and_suggests(tmp_path: Path, capsys):
    out = tmp_path / "lrf"
    assert main(["lr-find", "digits", "--model", "simple-cnn", "--img-size", "16", "--steps", "60",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    suggested = float(printed.split("suggested lr ")[1].split()[0])
    assert 1e-6 < suggested < 1
    with open(out / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 10 < len(rows) <= 60 and float(rows[1]["lr"]) > float(rows[0]["lr"])
    assert (out / "lr_find.png").stat().st_size > 10_000


def test_range_test_puts_the_weights_back():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(5)]
    from imgcls.artifact.card import ModelCard, Preprocess
    from imgcls.config import TrainConfig
    from imgcls.build import Built
    card = ModelCard("simple-cnn", ["a", "b", "c"], Preprocess(1, 2, (0.5,), (0.5,)))
    built = Built(model, model, model, batches, None, None, card)
    result = range_test(TrainConfig(), built, torch.device("cpu"), steps=12)  # 5 batches an epoch: 3 epochs
    assert len(result.lrs) == 12 and result.lrs[0] == pytest.approx(1e-7)
    assert all(b / a == pytest.approx(result.lrs[1] / result.lrs[0]) for a, b in zip(result.lrs, result.lrs[1:]))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_train_lr_auto_records_the_choice(tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["-q", "train", "digits", "--model", "simple-cnn", "--img-size", "16", "--epochs", "1",
                 "--lr", "auto", "--out", str(run)]) == 0
    text = (run / "config.yaml").read_text()
    assert text.startswith("# lr ") and "--lr auto" in text.splitlines()[0]
    lr = yaml.safe_load(text)["lr"]
    assert isinstance(lr, float) and 1e-6 < lr < 1
    assert (run / "lr_find.png").is_file()
    with open(run / "history.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["lr"]) == pytest.approx(lr)


def test_lr_must_be_a_number_or_auto(capsys):
    with pytest.raises(SystemExit):
        main(["train", "digits", "--lr", "fast"])
    assert "expected a number or auto" in capsys.readouterr().err


def test_lr_find_builds_without_importing_train():
    """lr-find and train share the build module; neither reaches into the other."""
    script = "import sys, imgcls.lr_find, imgcls.build\nassert 'imgcls.train' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", script], check=True)
