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
