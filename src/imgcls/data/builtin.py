"""scikit-learn's bundled digits as a built-in dataset: written once as PNG class folders beside the
decoded cache, so that it is just another folder to every command."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError

BUILTIN = ("digits",)


def builtin(name: str) -> Path:
    """Write a built-in dataset once as class folders of PNGs under the cache, and return its folder."""
    if name != "digits":
        raise UserError(f"Received: built-in dataset {name!r}; expected one of {', '.join(BUILTIN)}")
    from PIL import Image
    from sklearn.datasets import load_digits

    from .store import cache_root

    root = cache_root() / "digits"  # beside the decoded cache: one folder, one variable ($IMGCLS_CACHE_DIR)
    if (root / ".complete").exists():
        return root
    digits = load_digits()
    tmp = root.with_name(f"digits.tmp{os.getpid()}")
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        folder = tmp / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        # sklearn's digits are ink intensities 0..16; scale to 0..255 (bright ink on black, as MNIST).
        Image.fromarray((image * (255 / 16)).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
    (tmp / ".complete").touch()
    try:
        tmp.rename(root)
    except OSError:  # another process finished first; use its copy
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def resolve_source(source: str) -> Path:
    """A folder path, or a built-in dataset's folder when `source` names one and no such folder exists."""
    if source in BUILTIN and not Path(source).exists():
        return builtin(source)
    return Path(source)
