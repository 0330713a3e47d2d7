"""Grad-CAM, Grad-CAM++ and HiResCAM for every model imgcls has, through forward hooks on named blocks.

Where a model looks is read off its last spatial block (Selvaraju et al. 2017): the block's activations
weighted by the class score's gradient, summed over channels, rectified, upsampled to the input. The
default layer is found by running the model once, so a new family needs no table entry: it is the
last block of each backbone whose output still has more than one pixel (a fusion model: one per member,
their maps averaged). pytorch-grad-cam does the same with a target layer the caller must name per
family; that is the part imgcls does for the user.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .choices import EXPLAIN_METHODS as METHODS
from .errors import UserError



def _named_blocks(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    return model.block_groups() if hasattr(model, "block_groups") else [list(model.named_children())]


MIN_SIDE = 7  # where ImageNet backbones end at 224 px; coarser maps miss small objects


def block_shapes(model: nn.Module, channels: int, size: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Per backbone, (block name, output shape) of every block, from one forward pass of a blank picture."""
    groups = _named_blocks(model)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:  # a hook that returned a value would replace the output
            if isinstance(output, torch.Tensor):
                shapes.setdefault(name, tuple(output.shape))
        return hook

    hooks = [module.register_forward_hook(record(name)) for group in groups for name, module in group]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(torch.zeros(1, channels, size, size, device=next(model.parameters()).device))
            model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return [[(name, shapes.get(name, ())) for name, _ in group] for group in groups]


def _spatial(group: list[tuple[str, tuple[int, ...]]]) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, shape) for name, shape in group if len(shape) == 4 and shape[2] * shape[3] > 1]


def default_layers(model: nn.Module, channels: int, size: int) -> list[str]:
    """Per backbone, its family's `gradcam_block` where that is at least 7x7, else the last block whose
    output is at least 7x7 (else the last with more than one pixel), by block name. A 32 px airnet's last group is 4x4: its Grad-CAM++ peak fell on a 7-pixel
    object for 51 % of pictures, against 99 % one group earlier at 8x8 (bench/localisation.py)."""
    layers = []
    members = list(model.members.values()) if hasattr(model, "members") else [model]
    for group, member in zip(block_shapes(model, channels, size), members):
        spatial = _spatial(group)
        fine = [name for name, shape in spatial if min(shape[2:]) >= MIN_SIDE]
        # A family may name a better block (EfficientNet-Lite: not its 1x1 head), used where it is fine enough.
        preferred = getattr(member, "gradcam_block", None)
        chosen = [name for name in fine if preferred and (name == preferred or name.endswith("." + preferred))]
        if spatial:
            layers.append((chosen or fine or [name for name, _ in spatial])[-1])
    if not layers:
        raise UserError("Received: a model without a spatial block; expected a convolutional model for Grad-CAM")
    return layers


def last_spatial_blocks(model: nn.Module, channels: int, size: int) -> list[str]:
    """Per backbone, its last block with a spatial output: what the head pools."""
    return [_spatial(group)[-1][0] for group in block_shapes(model, channels, size) if _spatial(group)]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """A block name (as `imgcls models NAME` lists them) or any module path of the model."""
    blocks = {n: m for group in _named_blocks(model) for n, m in group}
    if name in blocks:
        return blocks[name]
    try:
        return model.get_submodule(name)
    except AttributeError:
        shown = ", ".join(list(blocks)[-8:])
        raise UserError(f"Received: --layer {name}; expected a block name of this model (e.g. {shown}) "
                        "or a module path from its state dict") from None


@dataclass
class Explanation:
    """For N pictures: class probabilities (N, K), the explained class per picture and its heatmap in
    [0, 1] at the model's input size (N, H, W)."""

    probs: np.ndarray
    classes: np.ndarray
    heatmaps: np.ndarray
    methods: list[str]  # what "auto" chose, per layer


def average_pooled(gradient: torch.Tensor) -> bool:
    """The gradient at a head's input is the same at every position when the head averages it."""
    spread = (gradient - gradient.mean((2, 3), keepdim=True)).abs().amax()
    return bool(spread <= 1e-5 * gradient.abs().amax().clamp(min=1e-30))


def resolved_method(method: str, pooled: bool) -> str:
    """auto → gradcam when the head average-pools the last spatial block (torchvision's and timm's
    backbones), else gradcam++. A flatten or max-pool head weighs each position on its own, and
    Grad-CAM's spatially averaged weights can cancel out there (simple-cnn on digits: an empty map);
    Grad-CAM++ weighs positive gradients per position. On the localisation benchmark Grad-CAM++ put
    the peak on the object for 96-100 % of pictures for simple-cnn, airnet and cifar-cnn (Grad-CAM:
    47-87 %), and Grad-CAM did better on EfficientNet-Lite0 (bench/localisation.py)."""
    if method != "auto":
        return method
    return "gradcam" if pooled else "gradcam++"


def _cam(activation: torch.Tensor, gradient: torch.Tensor, method: str) -> torch.Tensor:
    """The rectified class map (N, 1, h, w) at the block's resolution."""
    if method == "hirescam":
        return F.relu((activation * gradient).sum(1, keepdim=True))
    return F.relu((_weights(activation, gradient, method)[:, :, None, None] * activation).sum(1, keepdim=True))


def _weights(activation: torch.Tensor, gradient: torch.Tensor, method: str) -> torch.Tensor:
    """Per-channel weights (N, C)."""
    if method == "gradcam":
        return gradient.mean((2, 3))
    # Grad-CAM++ (Chattopadhyay et al. 2018), closed form for an exponential of the score, as
    # pytorch-grad-cam computes it.
    g2 = gradient.pow(2)
    g3 = g2 * gradient
    alpha = g2 / (2 * g2 + activation.sum((2, 3), keepdim=True) * g3 + 1e-7)
    alpha = torch.where(gradient != 0, alpha, torch.zeros_like(alpha))
    return (alpha * gradient.clamp(min=0)).sum((2, 3))


_ALIGNMENT: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def alignment(model: nn.Module, module: nn.Module, images: torch.Tensor) -> tuple[float, float, float, float]:
    """(stride_x, offset_x, stride_y, offset_y): the block's cell (i, j) is centred on input pixel
    (stride_x * j + offset_x, stride_y * i + offset_y). Measured, not assumed: the centroid of the input
    gradient of the central cell. Symmetric or TF-style 'same' padding shifts a stride-32 map by up to
    half a cell (16 px at 224 px), which plain upsampling would carry into every peak (EfficientNet-Lite0:
    a fine-tuned model's peak on the object for 61 % of pictures without this, bench/localisation.py)."""
    per_shape = _ALIGNMENT.setdefault(module, {})
    key = (images.shape[-2], images.shape[-1])
    if key in per_shape:
        return per_shape[key]
    seen: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, output: seen.append(output) and None)
    try:
        with torch.enable_grad():
            generator = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn((4, *images.shape[1:]), generator=generator).to(images).requires_grad_(True)
            model(x)
            output = seen[0]
            h, w = output.shape[-2:]
            (gradient,) = torch.autograd.grad(output[:, :, h // 2, w // 2].abs().sum(), x)
    finally:
        hook.remove()
    weight = gradient.abs().sum((0, 1)).double()
    ys = torch.arange(weight.shape[0], dtype=torch.float64, device=weight.device)
    xs = torch.arange(weight.shape[1], dtype=torch.float64, device=weight.device)
    total = weight.sum().clamp(min=1e-30)
    cy, cx = float((weight.sum(1) * ys).sum() / total), float((weight.sum(0) * xs).sum() / total)
    sy, sx = images.shape[-2] / h, images.shape[-1] / w
    per_shape[key] = (sx, cx - sx * (w // 2), sy, cy - sy * (h // 2))
    return per_shape[key]


def upsample(cam: torch.Tensor, size: tuple[int, int], align: tuple[float, float, float, float]) -> torch.Tensor:
    """(N, 1, h, w) → (N, H, W), each cell's value placed on the input pixel it is centred on."""
    sx, ox, sy, oy = align
    h, w = cam.shape[-2:]
    ys = (torch.arange(size[0], dtype=torch.float32, device=cam.device) - oy) / sy  # in cells
    xs = (torch.arange(size[1], dtype=torch.float32, device=cam.device) - ox) / sx
    grid = torch.stack(torch.meshgrid(2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1, indexing="xy"), -1)
    return F.grid_sample(cam, grid.expand(len(cam), -1, -1, -1), mode="bilinear", padding_mode="border",
                         align_corners=True)[:, 0]


# Per model (weakly: a model that is freed takes its entries with it), per input shape.
_HEADS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _heads(model: nn.Module, images: torch.Tensor) -> list[str]:
    per_shape = _HEADS.setdefault(model, {})
    key = (images.shape[1], images.shape[-1])
    if key not in per_shape:
        per_shape[key] = last_spatial_blocks(model, images.shape[1], images.shape[-1])
    return per_shape[key]


def explain_batch(model: nn.Module, images: torch.Tensor, layers: list[str], method: str = "auto",
                  target: int | np.ndarray | None = None, task=None) -> Explanation:
    """Heatmaps of `target` (a class index, one per picture, or None: the predicted class) for
    normalised `images` (N, C, H, W). The model's own parameters get no gradient."""
    if method not in METHODS:
        raise UserError(f"Received: --method {method}; expected one of {', '.join(METHODS)}")
    modules = [find_layer(model, name) for name in layers]
    # auto decides by the head: the gradient at what the head pools (its last spatial blocks)
    heads = _heads(model, images) if method == "auto" else []
    modules += [find_layer(model, name) for name in heads]
    activations: dict[int, torch.Tensor] = {}
    gradients: dict[int, torch.Tensor] = {}

    def keep(index: int):
        def hook(_module, _inputs, output):
            activations[index] = output
            output.register_hook(lambda grad: gradients.__setitem__(index, grad))
        return hook

    hooks = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    # An in-place activation after a hooked block would overwrite the tensor whose gradient is read.
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in inplace:
        m.inplace = False
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)  # gradients flow even through frozen blocks
            logits = model(x).float()
            chosen = (logits.argmax(1) if target is None else
                      torch.as_tensor(np.broadcast_to(np.asarray(target), (len(x),)).copy(), device=logits.device))
            logits.gather(1, chosen.view(-1, 1)).sum().backward(inputs=[x])
    finally:
        for hook in hooks:
            hook.remove()
        for m in inplace:
            m.inplace = True
    pooled = all(average_pooled(gradients[i].float()) for i in range(len(layers), len(modules)))
    maps, used = [], []
    for i in range(len(layers)):
        activation, gradient = activations[i].detach().float(), gradients[i].float()
        used.append(resolved_method(method, pooled))
        cam = _cam(activation, gradient, used[-1])
        cam = upsample(cam, tuple(images.shape[-2:]), alignment(model, modules[i], images))
        peak = cam.flatten(1).max(1).values.clamp(min=1e-12).view(-1, 1, 1)
        maps.append(cam / peak)
    heat = torch.stack(maps).mean(0)
    if task is None:
        from .tasks import get_task
        task = get_task("single-label")
    return Explanation(task.probabilities_torch(logits.detach()).cpu().numpy(), chosen.cpu().numpy(), heat.cpu().numpy(),
                       sorted(set(used)))


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(x, y) of the heatmap's largest value, in input pixels."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)
