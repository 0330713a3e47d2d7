"""imgcls: from a folder of pictures to a trained, checked and usable image classifier.

The public API is imported on first use (PEP 562): `import imgcls` and `imgcls --help` stay fast
because torch, torchvision and matplotlib load only when a function that needs them is called.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS = {
    "DataConfig": "config", "TrainConfig": "config", "resolve_config": "config",
    "Samples": "data.sources", "from_csv": "data.sources", "from_filenames": "data.sources",
    "from_folder": "data.sources", "load_samples": "data.sources",
    "UserError": "errors",
    "export": "export", "explain": "explain",
    "FinetuneResult": "finetune", "finetune": "finetune", "EnsembleResult": "ensemble",
    "create_model": "models.registry", "get_spec": "models.registry", "list_models": "models.registry",
    "evaluate": "predict", "load_model": "predict", "load_run": "predict", "predict": "predict",
    "predict_images": "predict",
    "RunResult": "train", "train": "train",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import DataConfig, TrainConfig, resolve_config  # noqa: F401
    from .data.sources import Samples, from_csv, from_filenames, from_folder, load_samples  # noqa: F401
    from .errors import UserError  # noqa: F401
    from .explain import explain  # noqa: F401
    from .export import export  # noqa: F401
    from .ensemble import EnsembleResult  # noqa: F401
    from .finetune import FinetuneResult, finetune  # noqa: F401
    from .models.registry import create_model, get_spec, list_models  # noqa: F401
    from .predict import evaluate, load_model, load_run, predict, predict_images  # noqa: F401
    from .train import RunResult, train  # noqa: F401


class _PublicAPI(types.ModuleType):
    """The package module. Importing a submodule sets it as an attribute of its package, and five
    submodules share their name with the function they define (train, predict, export, finetune,
    explain):
    `imgcls.train` must stay the function, as it was when these names were imported eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # `imgcls.train` is looked up by __getattr__ (the function); the module is sys.modules'
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _PublicAPI


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'imgcls' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
