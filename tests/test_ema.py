"""--ema: the moving average is what validation scores and what the run saves, and it resumes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.engine.optim import Schedule, build_optimizer
from imgcls.engine.trainer import Trainer
from imgcls.predict import load_run, predict_images
from imgcls.train import train


def test_ema_follows_the_warmed_up_textbook_update():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = build_optimizer(model, "sgd", 0.1)
    trainer = Trainer(model, optimizer, Schedule(optimizer, "none", 1, 4), ema_decay=0.5)
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(12)]
    expected = None
    for n, (images, labels) in enumerate(batches):
        trainer.train_one_epoch([(images, labels)])
        # torch's AveragedModel starts from the weights after the first step; the decay then warms up
        # as TensorFlow's: min(0.5, (1 + n) / (10 + n)), which reaches 0.5 at the 8th update
        weight = model.weight.detach().clone()
        decay = min(0.5, (1 + n) / (10 + n))
        expected = weight if expected is None else decay * expected + (1 - decay) * weight
    torch.testing.assert_close(trainer.weights_model.weight, expected)
    assert trainer.eval_model is trainer.weights_model is not model


def test_a_short_run_keeps_little_of_its_first_weights():
    # 0.999 without warm-up keeps 0.999 ** 1124 = 32 % of the first step's weights after 1,125 steps
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = build_optimizer(model, "sgd", 0.0)
    trainer = Trainer(model, optimizer, Schedule(optimizer, "none", 1, 4), ema_decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    trainer.ema.update_parameters(model)
    with torch.no_grad():
        model.weight.fill_(0.0)
    for _ in range(1124):
        trainer.ema.update_parameters(model)
    assert trainer.weights_model.weight.item() < 0.01


def test_an_ema_run_saves_and_scores_the_average(tmp_path: Path):
    result = train(source="digits", model="simple-cnn", img_size=12, epochs=2, ema=0.9, out=str(tmp_path / "run"),
                   report=False)
    run_dir = result.run_dir
    split = [line.split(",") for line in (run_dir / "split.csv").read_text().splitlines()[1:]]
    val = [p for p, _, side in split if side == "val"]
    labels = np.array([int(label) for _, label, side in split if side == "val"])
    probs, _, _ = predict_images(load_run(run_dir), val)
    log_loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1)).mean()
    assert log_loss == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["validation"]["log_loss"],
                                     abs=1e-5)
    state = torch.load(run_dir / "resume.pt", weights_only=True)
    assert state["ema"] and "n_averaged" in state["ema"]
