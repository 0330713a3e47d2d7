"""Run configuration as data: dataclass defaults < a YAML file < explicit overrides (CLI flags).

The resolved config is written into every run folder (config.yaml) and into the model metadata,
so a run can be resumed, evaluated or reproduced from its folder alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .choices import (AUGMENT_PRESETS, CHANNELS, CLASS_WEIGHTS, DEVICES, FREEZE, OPTIMIZERS, ORDERS, PRECISIONS,
                      KEEP_EPOCHS, OOD_METHODS, RESIZE_MODES, SCHEDULERS, SPLITS, TRACKERS, TRAIN_SAMPLERS)
from .errors import UserError


# Named sets of defaults, applied beneath a YAML file and flags (like Ultralytics' default.yaml or
# fastai's fit_one_cycle defaults). "auto" is "small" when no model is named anywhere, else "none".
RECIPES: dict[str, dict[str, Any]] = {
    "none": {},
    # airnet at the pictures' own size, one-cycle AdamW, label smoothing, batch 64, 6 epochs: what a
    # 2-core CPU trains on Fashion-MNIST in 4-5 minutes. No augmentation: over 6 epochs flips and shifts
    # cost more than they give (92.0 % against 93.3 % test accuracy); AdamW's decoupled weight decay
    # 0.05 rather than 5e-4 (issue 5; re-checked on validation: 0.01 and 0.1 tie with it). Batch 128
    # rather than 256, chosen on validation over 3 seeds: 0.9350 against 0.9334 accuracy, better in
    # every seed, and faster (164 s against 185 s) (bench/RESULTS.md, 2026-12-04). airbench's whitening
    # first layer (whiten=1), chosen on validation over 3 seeds: 0.9374 against 0.9348 on Fashion-MNIST,
    # better in every seed (test 0.9341 ± 0.0010), and +0.3 points on 10,000 CIFAR-10 pictures
    # (bench/RESULTS.md, 2026-12-07). Batch 64 rather than 128, chosen on validation over 3 seeds: 0.9389
    # against 0.9374 (better in 2 of 3), test 0.9350 ± 0.0018, for 23 % more time (bench/RESULTS.md, 2026-12-08).
    "small": {"model": "airnet", "model_args": {"whiten": 1}, "optimizer": "adamw", "lr": 4e-3,
              "weight_decay": 0.05, "scheduler": "onecycle", "label_smoothing": 0.1, "batch_size": 64, "epochs": 6},
    # airbench94's shape and schedule for a GPU: data held on the GPU, channels_last, bf16, compiled. On one
    # H200: 86.2 % test (flip TTA) in 4.3 s. Chosen on validation: lr 0.2 beat 0.1-1.5; batch 512 gained 1.5
    # points but took 6.8 s, past the 5 s this recipe is for (bench/RESULTS.md, GPU section).
    "cifar10-speed": {"model": "airnet", "model_args": {"widths": "64,256,256", "second_conv": "1,1,1",
                                                        "stem": 24, "act": "gelu"},
                      "optimizer": "sgd", "lr": 0.2, "momentum": 0.85, "weight_decay": 5e-4,
                      "scheduler": "onecycle", "label_smoothing": 0.2, "augment": "light", "batch_size": 1024,
                      "epochs": 10, "compile": True},
}


@dataclass
class DataConfig:
    """Where the pictures are and how their labels are found."""

    source: str = "digits"  # a folder, or the name of a built-in dataset ("digits")
    labels: str | None = None  # CSV of id,label beside a folder of <id><ext> pictures
    id_col: str = "id"
    label_col: str = "label"
    ext: str | None = None  # None: find <id>.* whatever the picture format
    label_pattern: str | None = None  # regex on the file name; its first group is the label
    multi_label: bool = False  # several labels per picture: the CSV's label cell holds them (tasks/multi_label.py)
    label_sep: str = " "  # between the labels of one cell (Planet's `agriculture clear road`); ";" or "|" too
    image_col: str = "image"  # parquet / save_to_disk: the column of picture bytes (data/archives.py)
    label_key: str = "label"  # WebDataset: the key of a sample's .json that holds its label
    val: str | None = None  # a separate validation folder (same layout flags)
    val_split: float = 0.2
    split: str = "stratified"
    seed: int = 0
    folds: int = 0  # > 1: K-fold cross-validation, validating on fold `fold` (what `imgcls audit` uses)
    fold: int = 0
    split_file: str | None = None  # a run's split.csv: reuse its train/val assignment (e.g. finetune's stage 2)
    exclude: str | None = None  # a suspects.csv (or any CSV with a path column): leave those pictures out
    exclude_top: int | None = None  # only its first N rows; None: the rows flagged as suspects
    clean: bool = False  # drop unreadable, tiny and cross-label duplicates; trim uniform borders
    min_pixels: int = 3600  # with clean: pictures with fewer pixels are dropped
    img_size: int | None = None  # None: the model's default input size
    # squash, crop (short side, centre) or pad (long side, letterbox): data/decode.py; auto: TrainConfig.resize_mode()
    resize: str = "auto"
    channels: int | None = None  # None: the model's default (1 grey, 3 colour)

    def task(self) -> str:
        """The kind of answer the labels ask for (tasks/): single-label or multi-label."""
        return "multi-label" if self.multi_label else "single-label"


@dataclass
class TrainConfig:
    """Everything `imgcls train` needs; `data` says where the pictures come from."""

    data: DataConfig = field(default_factory=DataConfig)
    recipe: str = "auto"  # a name in RECIPES: defaults beneath the YAML file and flags
    model: str = "simple-cnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False  # ImageNet weights through torchvision's weights API (or the offline package)
    weights: str | None = None  # a local safetensors file or state dict to start from
    freeze: str = "none"  # none, backbone (train the head only)
    unfreeze: list[str] = field(default_factory=list)  # block names that train (the rest of the backbone is frozen)
    unfreeze_last: int | None = None  # the last N blocks of each backbone train
    backbone_lr_mult: float = 1.0  # learning rate of the backbone = lr * this (the head gets lr)
    feature_cache: bool = True  # compute frozen leading blocks once (only without augmentation)
    cache_before_last: int = 0  # cache no deeper than before the last N blocks (finetune: stage 2's cut, one cache)
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float | str | None = None  # None: the optimiser's usual default (engine.optim); "auto": lr_find.py's suggestion
    momentum: float = 0.9
    nesterov: bool = False  # SGD's Nesterov momentum (airbench's)
    lookahead: int = 0  # > 0: Lookahead every this many steps, alpha 0.5 (engine/optim.py; airbench's)
    weight_decay: float = 0.0
    norm_weight_decay: float | None = None  # norm layers' weights and biases; None: weight_decay (engine/optim.py)
    bias_lr_mult: float = 1.0  # norm layers' weights and biases at lr * this, their decay / this (airbench's 64)
    freeze_bn_scale: bool = False  # BatchNorm scales stay as they start (airbench's): their biases still train
    val_every: int = 1  # validate every this many epochs and after the last (speed runs validate less)
    scheduler: str = "none"
    early_stop: int = 0  # stop after this many epochs without a better val loss; 0 = never
    keep: str = "best-loss"  # the epoch whose weights the run keeps: best-loss, best-accuracy or last
    augment: str = "none"  # none, light, standard, strong (choices.AUGMENT_PRESETS)
    mixup: float = 0.0  # Beta(alpha, alpha) mixing of picture pairs; 0 = off
    cutmix: float = 0.0  # alpha of CutMix; 0 = off (with mixup too, one of the two per batch)
    label_smoothing: float = 0.0
    device: str = "auto"
    channels_last: bool = True  # NHWC memory layout: faster convolutions on the CPU and on GPUs (bench/RESULTS.md)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere (this CPU kind has no bf16 units)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch, not each rank's slice
    compile: bool = False  # torch.compile the model: a GPU gain; on the CPU no gain for 30-60 s of compiling
    train_batches: int | None = None  # use only this many batches per epoch (smoke runs)
    cache: bool = True  # decoded pictures in the persistent on-disk cache (data/store.py); False: in memory
    cache_dir: str | None = None  # None: $IMGCLS_CACHE_DIR, $XDG_CACHE_HOME/imgcls or ~/.cache/imgcls
    cache_max_gb: float = 20.0  # least recently used cache entries are evicted beyond this
    order: str = "auto"  # training order: random, quasi (local reads), auto (quasi when the cache file exceeds memory)
    class_weight: str = "none"  # none, balanced: loss weights inversely proportional to class counts
    sampler: str = "uniform"  # uniform, balanced: every class drawn equally often (with replacement)
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and saved; 0: off
    calibrate: bool = False  # fit a temperature on the validation split after training (engine/calibration.py)
    calibrate_min_errors: int = 30  # below this many validation errors, --calibrate never sharpens (T < 1)
    threshold: float | None = None  # multi-label: one decision threshold for every class; None: per class, by F1
    ood: str = "auto"  # the out-of-distribution score fitted after training (openset/); none: no score
    reject_rate: float = 0.05  # the share of in-distribution validation pictures answered "unknown"
    outliers: str | None = None  # a folder of pictures known to be outside the classes: choose score and threshold
    coverage: float | None = 0.9  # conformal sets' promised coverage (single-label); 0 or None: no sets
    track: list[str] = field(default_factory=list)  # tensorboard, mlflow (tracking.py)
    class_names: str | list[str] | None = None  # names for the data's labels: FILE, label,name CSV or 'a,b,c'
    out: str | None = None

    def resize_mode(self) -> str:
        """--resize, with auto resolved: pretrained weights get their eval transform's geometry (torchvision's
        and timm's presets resize the short side and centre-crop: "crop"), so a photo is not distorted
        where ImageNet never was; a model trained from scratch gets all of the picture ("squash")."""
        if self.data.resize != "auto":
            return self.data.resize
        return "crop" if self.pretrained else "squash"

    def crop_fraction(self) -> float:
        """With --resize crop (or auto) and a timm model's pretrained weights: its pretrained config's
        crop_pct (0.875 at 224 px: the short side resized to 256, the centre 224 kept), as timm's eval
        transform does; else 1 (the whole short side)."""
        if self.resize_mode() != "crop" or not self.pretrained:
            return 1.0
        from .models.registry import get_spec

        cfg = get_spec(self.model).pretrained_cfg or {}
        return float(cfg.get("crop_pct") or 1.0)

    def task(self) -> str:
        """The kind of answer this run learns (tasks/): single-label or multi-label."""
        return self.data.task()

    def cache_settings(self):
        """The one description of the decoded cache (data/store.CacheSettings) that the data layer and
        the frozen-feature cache take."""
        from .data.store import CacheSettings

        return CacheSettings(self.cache, self.cache_dir, self.cache_max_gb)

    def _validate_multi_label(self) -> None:
        if not self.data.labels:
            raise UserError("Received: --multi-label without --labels; expected a CSV whose label cell holds each "
                            "picture's labels (class folders hold one label per picture)")
        if not self.data.label_sep or self.data.label_sep in (",", "\n"):
            raise UserError(f"Received: --label-sep {self.data.label_sep!r}; expected a separator inside the CSV "
                            "cell, such as ' ', ';' or '|'")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise UserError(f"Received: --threshold {self.threshold}; expected a probability between 0 and 1")
        if self.data.split == "balanced":
            raise UserError("Received: --split balanced with --multi-label; expected stratified (iterative "
                            "stratification keeps every label's share) or random: a picture with several labels "
                            "cannot be cut down to equal counts per class")

    def validate(self) -> None:
        """Check every choice where it enters, naming what was received and what is allowed."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("device", self.device, DEVICES)
        _choice("split", self.data.split, SPLITS)
        _choice("augment", self.augment, AUGMENT_PRESETS)
        _choice("freeze", self.freeze, FREEZE)
        _choice("recipe", self.recipe, ("auto", *RECIPES))
        _choice("precision", self.precision, PRECISIONS)
        _choice("order", self.order, ORDERS)
        _choice("resize", self.data.resize, RESIZE_MODES)
        _choice("class-weight", self.class_weight, CLASS_WEIGHTS)
        _choice("sampler", self.sampler, TRAIN_SAMPLERS)
        for tracker in self.track:
            _choice("track", tracker, TRACKERS)
        if self.unfreeze_last is not None and self.unfreeze_last < 0:
            raise UserError(f"Received: unfreeze-last={self.unfreeze_last}; expected an integer >= 0")
        if self.backbone_lr_mult <= 0:
            raise UserError(f"Received: backbone-lr-mult={self.backbone_lr_mult}; expected a positive number")
        if self.pretrained and self.weights:
            raise UserError("Received: --pretrained and --weights together; expected one source of starting weights")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise UserError(f"Received: {name}={getattr(self, name)}; expected an alpha >= 0 (0 = off)")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"Received: label-smoothing={self.label_smoothing}; expected a number in [0, 1)")
        if self.epochs < 1:
            raise UserError(f"Received: epochs={self.epochs}; expected an integer >= 1")
        if self.batch_size < 1:
            raise UserError(f"Received: batch-size={self.batch_size}; expected an integer >= 1")
        if self.data.val is None and not 0.0 < self.data.val_split < 1.0:
            raise UserError(f"Received: val-split={self.data.val_split}; expected a fraction between 0 and 1")
        if self.data.folds and not 0 <= self.data.fold < self.data.folds:
            raise UserError(f"Received: fold={self.data.fold} of folds={self.data.folds}; expected 0 <= fold < folds")
        if self.data.exclude_top is not None and not self.data.exclude:
            raise UserError(f"Received: top={self.data.exclude_top} without exclude; expected --exclude CSV --top N")
        if self.data.multi_label:
            self._validate_multi_label()
        elif self.threshold is not None:
            raise UserError(f"Received: --threshold {self.threshold} without --multi-label; expected it with "
                            "--multi-label (one class per picture is decided by the highest probability)")
        if self.data.channels is not None and self.data.channels not in CHANNELS:
            raise UserError(f"Received: channels={self.data.channels}; expected 1 or 3")
        if self.data.img_size is not None and self.data.img_size < 8:
            raise UserError(f"Received: img-size={self.data.img_size}; expected an integer >= 8")
        _choice("ood", self.ood, OOD_METHODS)
        _choice("keep", self.keep, KEEP_EPOCHS)
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise UserError(f"Received: --nesterov with optimizer={self.optimizer}, momentum={self.momentum}; "
                            "expected sgd with a momentum above 0")
        if self.lookahead < 0:
            raise UserError(f"Received: lookahead={self.lookahead}; expected the steps between syncs (0: off)")
        if not self.bias_lr_mult > 0:
            raise UserError(f"Received: bias-lr-mult={self.bias_lr_mult}; expected a number above 0 (1: off)")
        if self.val_every < 1:
            raise UserError(f"Received: val-every={self.val_every}; expected an integer >= 1 (1: every epoch)")
        if self.calibrate_min_errors < 0:
            raise UserError(f"Received: calibrate-min-errors={self.calibrate_min_errors}; expected an integer >= 0")
        if not 0 <= self.reject_rate < 1:
            raise UserError(f"Received: reject-rate={self.reject_rate}; expected a share in [0, 1) such as 0.05")
        if self.coverage and not 0 < self.coverage < 1:
            raise UserError(f"Received: coverage={self.coverage}; expected a probability between 0 and 1 (or none)")
        if self.outliers is not None and not Path(self.outliers).is_dir():
            raise UserError(f"Received: outliers={self.outliers}; expected a folder of pictures outside the classes")
        if not 0 <= self.ema < 1:
            raise UserError(f"Received: ema={self.ema}; expected a decay in [0, 1) such as 0.999 (0: off)")
        if self.norm_weight_decay is not None and self.norm_weight_decay < 0:
            raise UserError(f"Received: norm-weight-decay={self.norm_weight_decay}; expected a number >= 0")
        if self.lr is not None and self.lr != "auto" and (isinstance(self.lr, str) or self.lr <= 0):
            raise UserError(f"Received: lr={self.lr}; expected a positive number or auto")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"Received: {name}={value}; expected one of {', '.join(allowed)}")


def _data_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(DataConfig)}


def _train_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)} - {"data"}


def recipe_defaults(values: dict[str, Any]) -> TrainConfig:
    """The defaults with the recipe `values` asks for laid over them ("auto": "small" unless a model is named)."""
    name = values.get("recipe") or "auto"
    if name == "auto":
        name = "none" if values.get("model") else "small"
    if name not in RECIPES:
        raise UserError(f"Received: recipe={name}; expected one of auto, {', '.join(RECIPES)}")
    config = TrainConfig()
    for key, value in RECIPES[name].items():
        setattr(config, key, dict(value) if isinstance(value, dict) else value)
    return config


def config_from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Overlay `values` on `base` (or on the defaults of the recipe they ask for). Data keys may sit
    flat or under `data:`."""
    config = dataclasses.replace(base or recipe_defaults(values))
    data = dataclasses.replace(config.data)
    flat = dict(values)
    nested = flat.pop("data", None) or {}
    if not isinstance(nested, dict):
        raise UserError(f"Received: data={nested!r} in the config; expected a mapping of data settings")
    flat.update(nested)
    for key, value in flat.items():
        key = key.replace("-", "_")
        if key == "model_args" and flat.get("model", config.model) == config.model:
            value = {**config.model_args, **(value or {})}  # a recipe's model arguments, one changed
        if key in _data_fields():
            setattr(data, key, value)
        elif key in _train_fields():
            setattr(config, key, value)
        else:
            allowed = ", ".join(sorted(_data_fields() | _train_fields()))
            raise UserError(f"Received: unknown config key {key!r}; expected one of {allowed}")
    config.data = data
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (safe loader only: a config is data, never code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Received: config {path}; expected an existing YAML file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"Received: config {path} that is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"Received: config {path} holding {type(values).__name__}; expected a mapping")
    return values


def resolve_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < recipe < YAML file < overrides (keys whose value is None are left out)."""
    values = load_yaml(yaml_path) if yaml_path is not None else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = config_from_dict(values)
    config.validate()
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
