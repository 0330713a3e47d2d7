"""The model card: one typed object for a run's model.json, read and written here only (timm's
PretrainedCfg, torchvision's Weights.meta). It says how to rebuild the network, which classes its
outputs are, what kind of answer they give (the task), and how a picture becomes its input (Preprocess).

Versions: imgcls-model/1 (every run folder before the task seam: single-label, optional resize,
trim_borders and temperature), imgcls-model/2 (adds task and thresholds) and imgcls-model/3 (adds the
out-of-distribution score and conformal sets, openset/) all load; a newer one is refused in one line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .files import CARD

FORMAT = "imgcls-model/3"
READABLE = ("imgcls-model/1", "imgcls-model/2", FORMAT)


@dataclass(frozen=True)
class Preprocess:
    """uint8 picture → model input, the one definition: decode to channels x size x size (resize mode,
    optional border trim), then (x / 255 - mean) / std per channel, NCHW. Training's loader, predict,
    evaluate, explain, serve, export and int8 calibration all ask this object."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "squash"  # squash, crop or pad (data/decode.py)
    trim: bool = False  # crop uniform white/black borders first (train --clean)
    crop: float = 1.0  # with resize crop: the fraction of the short side kept (timm's crop_pct)

    def decode(self, path, max_pixels: int | None = None) -> np.ndarray:
        """One picture file (or file object) → (channels, size, size) uint8."""
        from ..data.decode import decode_image

        return decode_image(path, self.channels, self.size, self.trim, max_pixels, resize=self.resize, crop=self.crop)

    def decode_with_geometry(self, path, max_pixels: int | None = None):
        """decode() and where the input sits in the picture (explain's overlays)."""
        from ..data.decode import decode_with_geometry

        return decode_with_geometry(path, self.channels, self.size, self.trim, max_pixels, resize=self.resize,
                                    crop=self.crop)

    def scale(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) in uint8 units, shaped (1, C, 1, 1): input = (pixels - mean) / std."""
        shape = (1, self.channels, 1, 1)
        return (np.asarray(self.mean, np.float32).reshape(shape) * 255,
                np.asarray(self.std, np.float32).reshape(shape) * 255)

    def normalise(self, pictures: np.ndarray) -> np.ndarray:
        """(N, C, S, S) uint8 → float32 input, with numpy alone (the onnx backend)."""
        mean, std = self.scale()
        return (pictures.astype(np.float32) - mean) / std

    def normalise_torch(self, pictures, device=None):
        """(N, C, S, S) uint8 tensor → float input tensor on `device`."""
        import torch

        device = device or pictures.device
        mean, std = (torch.from_numpy(v).to(device) for v in self.scale())
        return (pictures.to(device).float() - mean) / std

    def contract(self) -> dict:
        """What a caller outside imgcls must do to a picture (the export contract's input half)."""
        short = "height" if self.crop == 1.0 else f"round(height / {self.crop:g})"
        steps = {"squash": "resize to height x width (bilinear)",
                 "crop": f"resize the short side to {short} (bilinear), keep the centre height x width",
                 "pad": "resize the long side to height (bilinear), pad to height x width with grey 114"}
        return {"input": {"name": "input", "layout": "NCHW", "dtype": "float32", "channels": self.channels,
                          "height": self.size, "width": self.size, "batch": "dynamic"},
                "preprocess": steps[self.resize] + ", scale to [0, 1], subtract mean, divide by std"
                + ("; crop uniform borders first (trim_borders)" if self.trim else ""),
                "mean": list(self.mean), "std": list(self.std), "trim_borders": self.trim, "resize": self.resize,
                **({"crop_fraction": self.crop} if self.crop != 1.0 else {})}


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild, run and read a saved model."""

    architecture: str
    classes: list[str]
    preprocess: Preprocess
    model_args: dict = field(default_factory=dict)
    task: str = "single-label"  # tasks/: single-label or multi-label
    temperature: float | list[float] = 1.0  # train --calibrate: one for single-label, one per class for multi-label
    thresholds: list[float] | None = None  # multi-label: one decision threshold per class
    given_classes: list[str] | None = None  # the data's own labels when --class-names renamed them
    ood: dict | None = None  # the out-of-distribution score: method, threshold (openset/fit.py)
    conformal: dict | None = None  # conformal sets: method, coverage, threshold (openset/conformal.py)
    best_epoch: int | None = None
    pretrained_cfg: dict | None = None  # timm/ models: the pretrained config the preprocessing came from
    imgcls_version: str | None = None
    config: dict = field(default_factory=dict)  # the resolved training config (config.yaml's content)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def label_sep(self) -> str:
        """What separates several labels in one CSV cell, as the run was trained with."""
        return (self.config.get("data") or {}).get("label_sep") or " "

    def with_(self, **changes: Any) -> "ModelCard":
        return replace(self, **changes)

    # -- model.json ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        p = self.preprocess
        data = {"format": FORMAT, "imgcls_version": self.imgcls_version, "task": self.task,
                "architecture": self.architecture, "model_args": dict(self.model_args),
                "num_classes": self.num_classes, "classes": list(self.classes),
                **({"given_classes": list(self.given_classes)} if self.given_classes else {}),
                "input_size": p.size, "channels": p.channels, "mean": list(p.mean), "std": list(p.std),
                "resize": p.resize, "trim_borders": p.trim, **({"crop_fraction": p.crop} if p.crop != 1.0 else {}),
                **({"temperature": self.temperature} if self.temperature != 1.0 else {}),
                **({"thresholds": list(self.thresholds)} if self.thresholds is not None else {}),
                **({"ood": dict(self.ood)} if self.ood else {}),
                **({"conformal": dict(self.conformal)} if self.conformal else {}),
                **({"best_epoch": self.best_epoch} if self.best_epoch is not None else {}),
                **({"pretrained_cfg": dict(self.pretrained_cfg)} if self.pretrained_cfg else {}),
                "config": self.config}
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = CARD) -> "ModelCard":
        version = data.get("format")
        if version not in READABLE:
            raise UserError(f"Received: {where} of format {version!r}; expected one of {', '.join(READABLE)} "
                            "(written by a newer imgcls? upgrade imgcls to read it)")
        try:
            preprocess = Preprocess(int(data["channels"]), int(data["input_size"]), tuple(data["mean"]),
                                    tuple(data["std"]), data.get("resize", "squash"), bool(data.get("trim_borders")),
                                    float(data.get("crop_fraction", 1.0)))
            return cls(architecture=data["architecture"], classes=list(data["classes"]), preprocess=preprocess,
                       model_args=dict(data.get("model_args") or {}), task=data.get("task", "single-label"),
                       temperature=_temperature(data.get("temperature", 1.0)), thresholds=data.get("thresholds"),
                       given_classes=data.get("given_classes"), best_epoch=data.get("best_epoch"),
                       ood=data.get("ood"), conformal=data.get("conformal"), pretrained_cfg=data.get("pretrained_cfg"),
                       imgcls_version=data.get("imgcls_version"), config=data.get("config") or {})
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"Received: {where} without a valid {error}; expected a model card written by "
                            "imgcls train") from None


def _temperature(value) -> float | list[float]:
    return [float(t) for t in value] if isinstance(value, list) else float(value)


def read_card(run_dir: str | Path) -> ModelCard:
    """The model card of a run folder (not a finetune folder: files.final_run_dir first)."""
    path = Path(run_dir) / CARD
    if not path.is_file():
        raise UserError(f"Received: RUN_DIR {run_dir} without {CARD}; expected a folder written by imgcls train")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"Received: {path} that is not JSON ({error}); expected a model card") from None
    return ModelCard.from_json(data, str(path))


def write_card(run_dir: str | Path, card: ModelCard) -> None:
    from ..engine.checkpoint import write_json

    write_json(Path(run_dir) / CARD, card.to_json())
