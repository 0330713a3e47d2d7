"""Device choice and reproducibility settings."""
from __future__ import annotations

import torch

from ..errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA if present, else Apple's MPS, else the CPU. An explicit device must exist."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda or name == "mps" and not mps:
        raise UserError(f"Received: device={name}, which this machine does not have; expected auto or cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"Received: device={name}; expected one of auto, cpu, cuda, mps")
    return torch.device(name)


def seed_everything(seed: int, offset: int = 0) -> torch.Generator:
    """Seed torch's global RNG (weights, dropout, augmentation) with seed + offset, and return a separate
    generator for shuffling seeded with `seed`. Under torchrun offset = rank (as nanoGPT does): every rank
    walks the same batch order but draws its own augmentation and dropout; DDP copies rank 0's weights."""
    torch.manual_seed(seed + offset)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
