"""Augmentation presets applied to whole uint8 batches on the training device.

Cheap geometric and photometric steps (flip, pad-and-crop, brightness/contrast) are vectorised over
the batch, each picture drawing its own random values; the costlier ones (random resized crop for
larger pictures, RandAugment) come from torchvision's transforms v2, applied picture by picture.
Presets adapt to the picture size (pad-and-crop below 64 px, random resized crop above) and to
greyscale (no colour steps that need three channels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError

from ..choices import AUGMENT_PRESETS as PRESETS


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror about half of the pictures left-right."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_translate(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by `pad` pixels (mirrored), then cut each picture back at its own random offset."""
    n, c, h, w = x.shape
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect").to(x.dtype)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_brightness_contrast(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Scale brightness and contrast of each picture by its own factor in [1 - strength, 1 + strength]."""
    n = len(x)
    f = x.float()
    brightness = 1 + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * strength
    contrast = 1 + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * strength
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    f = ((f - mean) * contrast + mean) * brightness
    return f.clamp_(0, 255).round_().to(torch.uint8)


class BatchAugment:
    """Callable on a (B, C, H, W) uint8 batch, returning an augmented uint8 batch of the same shape."""

    def __init__(self, preset: str, size: int, channels: int):
        if preset not in PRESETS:
            raise UserError(f"Received: augment={preset}; expected one of {', '.join(PRESETS)}")
        self.preset = preset
        self.size = size
        self.small = size < 64
        self.pad = max(1, size // 8)
        self.per_picture = None
        if preset == "strong" or preset == "standard" and not self.small:
            # torchvision imported only here: its import costs about 2 s that runs without these steps
            # (and `imgcls predict`) need not pay.
            from torchvision.transforms import v2

            per_picture = [] if self.small else [v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True)]
            if preset == "strong":
                per_picture.append(v2.RandAugment(num_ops=2, magnitude=9))
            self.per_picture = v2.Compose(per_picture)
        self.strength = {"none": 0.0, "light": 0.0, "standard": 0.2, "strong": 0.3}[preset]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.preset == "none":
            return x
        x = random_flip(x)
        if self.small:
            x = random_translate(x, self.pad)
        if self.per_picture is not None:
            x = torch.stack([self.per_picture(picture) for picture in x])
        if self.strength:
            x = random_brightness_contrast(x, self.strength)
        return x


class MultiHotMixer:
    """MixUp and CutMix for several labels per picture: torchvision's v2 mixers take one class index per
    picture, so here the multi-hot label vectors are mixed in the same proportion as the pixels (each
    batch mixed with itself rolled by one, as torchvision does; one of the two per batch when both are on)."""

    def __init__(self, mixup: float, cutmix: float):
        self.alphas = [(kind, alpha) for kind, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kind, alpha = self.alphas[int(torch.randint(len(self.alphas), ()))]
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other = images.roll(1, 0)
        if kind == "mixup":
            images = images.mul(lam).add_(other, alpha=1 - lam)
        else:  # a box of area 1 - lam from the other picture; lam becomes the share left
            h, w = images.shape[-2:]
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            half_h, half_w = int(h * (1 - lam) ** 0.5 / 2), int(w * (1 - lam) ** 0.5 / 2)
            top, bottom = max(cy - half_h, 0), min(cy + half_h, h)
            left, right = max(cx - half_w, 0), min(cx + half_w, w)
            images = images.clone()
            images[..., top:bottom, left:right] = other[..., top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (h * w)
        targets = labels.float()
        return images, targets.mul(lam).add_(targets.roll(1, 0), alpha=1 - lam)


def batch_mixer(mixup: float, cutmix: float, num_classes: int, multi_label: bool = False):
    """MixUp and/or CutMix from torchvision (one of the two per batch when both are on), or None; for
    several labels per picture, MultiHotMixer."""
    if mixup <= 0 and cutmix <= 0:
        return None
    if multi_label:
        return MultiHotMixer(mixup, cutmix)
    from torchvision.transforms import v2  # lazily, as above

    mixers = []
    if mixup > 0:
        mixers.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixers.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
