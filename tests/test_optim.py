"""Parameter groups: no weight decay on norm layers and biases when asked (timm's rule), with the
backbone's learning-rate multiplier kept."""
from __future__ import annotations

import torch

from imgcls.engine.optim import build_optimizer, param_groups
from imgcls.models.registry import create_model
from imgcls.train import train


def test_norm_layers_and_biases_get_their_own_weight_decay():
    model = create_model("simple-cnn", 10)
    groups = param_groups(model, 1e-3, weight_decay=0.05, norm_weight_decay=0.0)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    free = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    bn = model.features[0][1]
    assert id(bn.weight) in free and id(bn.bias) in free and id(model.head.bias) in free
    assert id(model.features[0][0].weight) in decayed and id(model.head.weight) in decayed
    assert len(decayed) + len(free) == len(list(model.parameters()))
    # default: one decay for all (the behaviour before --norm-weight-decay)
    assert [g["weight_decay"] for g in param_groups(model, 1e-3, weight_decay=0.05)] == [0.05]


def test_backbone_multiplier_and_norm_groups_combine():
    model = create_model("simple-cnn", 3)
    optimizer = build_optimizer(model, "adamw", 1e-2, weight_decay=0.05, backbone_lr_mult=0.1, norm_weight_decay=0.0)
    pairs = sorted((g["lr"], g["weight_decay"]) for g in optimizer.param_groups)
    assert pairs == sorted([(1e-2, 0.05), (1e-2, 0.0), (1e-3, 0.05), (1e-3, 0.0)])
    head = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        assert all((id(p) in head) == (group["lr"] == 1e-2) for p in group["params"])


def test_a_norm_weight_decay_run(tmp_path):
    result = train(source="digits", model="simple-cnn", img_size=12, epochs=1, weight_decay=0.05,
                   norm_weight_decay=0.0, optimizer="adamw", out=str(tmp_path / "run"), report=False)
    assert result.best_epoch == 1 and torch.isfinite(torch.tensor(result.val_log_loss))


def test_lookahead_syncs_the_slow_weights_every_k_steps():
    import torch

    from imgcls.engine.optim import Lookahead, build_optimizer

    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = Lookahead(torch.optim.SGD([weight], lr=1.0), alpha=0.5, k=3)
    seen = []
    for _ in range(6):
        optimizer.zero_grad()
        weight.grad = torch.full((2,), -1.0)  # each base step adds 1
        optimizer.step()
        seen.append(weight.detach()[0].item())
    # steps 1-2 run ahead (1, 2); step 3 reaches 3, then goes back half way to the start (0): 1.5;
    # steps 4-5 run ahead (2.5, 3.5); step 6 reaches 4.5 and goes half way back to 1.5: 3.0
    assert seen == [1.0, 2.0, 1.5, 2.5, 3.5, 3.0]
    # the slow weights and the step count are saved and resumed with the optimiser
    state = optimizer.state_dict()
    again = Lookahead(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0), alpha=0.5, k=3)
    again.load_state_dict(state)
    assert again.steps == 6 and float(again.slow[0][0]) == 3.0
    # a schedule drives it like any optimiser
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] < 1.0
    nesterov = build_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd", 0.1, 0.9, nesterov=True)
    assert nesterov.param_groups[0]["nesterov"]


def test_nesterov_and_lookahead_from_the_command_line(class_folder, tmp_path):
    import json

    from imgcls.cli import main

    run = tmp_path / "run"
    assert main(["train", str(class_folder), "--model", "simple-cnn", "--img-size", "16", "--channels", "3",
                 "--optimizer", "sgd", "--nesterov", "--lookahead", "2", "--epochs", "2", "--batch-size", "8",
                 "--out", str(run)]) == 0
    config = (run / "config.yaml").read_text()
    assert "nesterov: true" in config and "lookahead: 2" in config
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2
    assert main(["train", str(class_folder), "--optimizer", "adam", "--nesterov", "--epochs", "1",
                 "--out", str(tmp_path / "refused")]) == 2


def test_bias_lr_multiplier_keeps_lr_times_decay():
    model = create_model("simple-cnn", 10)
    groups = param_groups(model, 0.01, weight_decay=5e-4, bias_lr_mult=64)
    small = next(g for g in groups if g["lr"] == 0.64)
    bn = model.features[0][1]
    assert {id(bn.bias), id(model.head.bias)} <= {id(p) for p in small["params"]}
    assert all(p.ndim <= 1 for p in small["params"])
    assert small["weight_decay"] * small["lr"] == 5e-4 * 0.01  # airbench's decay / 64: lr x decay unchanged
    assert next(g for g in groups if g["lr"] == 0.01)["weight_decay"] == 5e-4


def test_frozen_bn_scales_bias_multiplier_and_validation_every_few_epochs(class_folder, tmp_path):
    import csv
    import json
    import math

    from safetensors.torch import load_file

    from imgcls.cli import main

    run = tmp_path / "run"
    assert main(["train", str(class_folder), "--model", "simple-cnn", "--img-size", "16", "--channels", "3",
                 "--optimizer", "sgd", "--freeze-bn-scale", "--bias-lr-mult", "8", "--val-every", "2", "--epochs",
                 "5", "--batch-size", "8", "--out", str(run)]) == 0
    weights = load_file(str(run / "model.safetensors"))
    scales = [k for k in weights if k.endswith(".weight") and weights[k].ndim == 1 and "features" in k]
    assert scales and all(torch.equal(weights[k], torch.ones_like(weights[k])) for k in scales)  # still at 1
    assert any(not torch.equal(weights[k.replace("weight", "bias")], torch.zeros_like(weights[k])) for k in scales)
    rows = list(csv.DictReader(open(run / "history.csv")))
    validated = [int(r["epoch"]) for r in rows if not math.isnan(float(r["val_loss"]))]
    assert validated == [2, 4, 5]  # every second epoch and the last
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] in validated
    assert main(["train", str(class_folder), "--val-every", "0", "--out", str(tmp_path / "refused")]) == 2
