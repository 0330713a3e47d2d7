"""Imbalanced classes: --sampler balanced draws every class equally often, --class-weight balanced
weighs the loss; both train end to end."""
from __future__ import annotations

from pathlib import Path

import torch

from imgcls.data.loader import BatchOrder, balanced_weights
from imgcls.train import train

from .conftest import write_class_folders


def test_balanced_order_draws_each_class_equally_often():
    labels = torch.tensor([0] * 90 + [1] * 10)
    order = BatchOrder(100, 10, shuffle=True, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                       weights=balanced_weights(labels))
    drawn = torch.cat([labels[idx] for _ in range(20) for idx in order])
    share = (drawn == 1).float().mean().item()
    assert 0.45 < share < 0.55 and len(drawn) == 2000  # 10 % of the pictures, half of the draws


def test_imbalanced_run_with_weights_and_sampler(tmp_path: Path, caplog):
    data = tmp_path / "data"
    write_class_folders(data, per_class=20, classes=("red", "blue"))
    for i in range(15):  # 5 blue pictures left against 20 red
        (data / "blue" / f"{i}.png").unlink()
    with caplog.at_level("INFO", logger="imgcls"):
        result = train(source=str(data), model="simple-cnn", img_size=16, channels=3, epochs=2, batch_size=8,
                       class_weight="balanced", sampler="balanced", out=str(tmp_path / "run"), report=False)
    assert result.best_epoch >= 1
    message = next(r.getMessage() for r in caplog.records if "--class-weight balanced" in r.getMessage())
    weights = dict(part.split() for part in message.split(": ", 1)[1].split(", "))
    assert float(weights["blue"]) > 2 * float(weights["red"])
