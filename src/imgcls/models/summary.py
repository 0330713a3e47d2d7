"""A layer-by-layer summary (output shape, parameters), like Keras's model.summary()."""
from __future__ import annotations

import torch
import torch.nn as nn


def summarize(model: nn.Module, in_chans: int, img_size: int) -> list[dict]:
    """One row per leaf layer, in call order: name, type, output shape, parameter count."""
    rows: list[dict] = []
    hooks = []
    for name, module in model.named_modules():
        if len(list(module.children())) == 0:
            def hook(mod, _inputs, output, name=name):
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else "?"
                rows.append({"name": name, "type": type(mod).__name__, "output": shape,
                             "params": sum(p.numel() for p in mod.parameters())})
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, img_size, img_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def format_summary(rows: list[dict], model: nn.Module) -> str:
    lines = [f"{'layer':32} {'type':16} {'output shape':22} {'params':>10}", "-" * 83]
    for row in rows:
        shape = "(None, " + ", ".join(str(d) for d in row["output"][1:]) + ")" if row["output"] != "?" else "?"
        lines.append(f"{row['name'][:32]:32} {row['type'][:16]:16} {shape:22} {row['params']:>10,}")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines += ["-" * 83, f"Total params: {total:,}   Trainable params: {trainable:,}"]
    return "\n".join(lines)
