"""The data stage of `imgcls train`: source → exclude → clean → decode (the cache) → split.

Everything here is the same for every rank of a torchrun job; the run folder's writes are no-ops on
all but the first (runs.RunFolder).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import UserError
from ..runs import RunFolder, read_split
from .class_names import parse_class_names
from .dataset import DecodedImages, decode_samples
from .decode import probe_pictures
from ..tasks import get_task
from .sources import Samples, load_samples
from .splits import kfold_indices, split_indices
from .store import CacheSettings

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """A run's decoded training and validation pictures, and what was left out on the way."""

    train: DecodedImages
    val: DecodedImages
    classes: list[str]
    channels: int
    size: int
    given_classes: list[str] | None  # the data's own labels when --class-names renamed them
    skipped: list[dict]
    excluded: list[str]
    dropped: dict[str, str]

    def write(self, folder: RunFolder, data: DataConfig) -> None:
        """data.json (counts, skipped, excluded, cleaned) and split.csv."""
        classes = self.classes
        folder.write_data({
            "source": data.source, "classes": classes, "img_size": self.size, "channels": self.channels,
            "counts": {"train": _counts(self.train, classes), "val": _counts(self.val, classes)},
            "skipped_count": len(self.skipped), "skipped": self.skipped,
            "excluded_count": len(self.excluded), "excluded": self.excluded,
            "cleaned": {"trim_borders": data.clean, "dropped_count": len(self.dropped),
                        "dropped": [{"path": p, "reason": r} for p, r in self.dropped.items()]}})
        task = get_task(data.task())
        folder.write_split([(p, task.label_text(l.numpy(), classes, data.label_sep), side)
                            for side, part in (("train", self.train), ("val", self.val))
                            for p, l in zip(part.paths, part.labels)])


def _data_kwargs(d: DataConfig, source: str) -> dict:
    return dict(source=source, labels=d.labels, id_col=d.id_col, label_col=d.label_col, ext=d.ext,
                label_pattern=d.label_pattern, clean=d.clean, multi_label=d.multi_label, label_sep=d.label_sep,
                image_col=d.image_col, label_key=d.label_key)


def load_training_samples(data: DataConfig, class_names: str | list[str] | None = None) -> tuple[Samples, list[str]]:
    """The source's labelled pictures less --exclude's, renamed by --class-names; at least two classes
    must remain."""
    samples, excluded = _exclude(data, load_samples(**_data_kwargs(data, data.source)))
    if class_names:
        samples = samples.renamed(parse_class_names(class_names, samples.classes))
    if len(samples.classes) < 2:
        raise UserError(f"Received: {data.source} with a single class ({samples.classes[0]!r}); "
                        "expected pictures of at least two classes")
    _require_two_classes(samples, data.source, "--exclude")
    return samples, excluded


def prepare_data(data: DataConfig, samples: Samples, excluded: list[str], folder: RunFolder, *, resuming: bool,
                 spec, model_args: dict, resize: str, cache: CacheSettings, crop: float = 1.0) -> PreparedData:
    """Clean, decode through the cache and split `samples` (and decode --val's folder) at the model's
    (spec, model_args) input shape unless the flags give it; `resize` is resolved (not auto), `crop` the
    fraction of the short side a crop keeps (TrainConfig.crop_fraction)."""
    samples, dropped = _clean(data, samples, cache)
    _require_two_classes(samples, data.source, "--clean")
    channels, size = picture_shape(data, spec, model_args, samples)
    log.info("%d classes, %d pictures; decoding each once at %d px, %d channel(s)", len(samples.classes),
             len(samples), size, channels)
    trim = data.clean
    decoded, skipped = decode_samples(samples, channels, size, trim=trim, cache=cache, resize=resize, crop=crop)
    skipped = samples.skipped + skipped
    if data.val:
        # A separate validation folder uses the same layout flags; its classes must be the training ones.
        val_samples = load_samples(**_data_kwargs(data, data.val), classes=samples.given_classes or samples.classes)
        if samples.given_classes:
            val_samples = val_samples.renamed(samples.classes)
        train_data, (val_data, val_skipped) = decoded, decode_samples(val_samples, channels, size, trim=trim,
                                                                      cache=cache, resize=resize, crop=crop)
        skipped += val_samples.skipped + val_skipped
    else:
        train_idx, val_idx = _split(data, decoded, folder, resuming)
        train_data, val_data = decoded.subset(train_idx), decoded.subset(val_idx)
    if len(train_data) == 0 or len(val_data) == 0:
        raise UserError(f"Received: {data.source} where no {'training' if not len(train_data) else 'validation'} "
                        "picture could be decoded; expected readable pictures (see the skipped list above)")
    return PreparedData(train_data, val_data, samples.classes, channels, size, samples.given_classes, skipped,
                        excluded, dropped)


def picture_shape(d: DataConfig, spec, model_args: dict, samples: Samples) -> tuple[int, int]:
    """(channels, side) to decode at: the flags', else the model's; a model that fits any picture
    (airnet) takes the pictures' own channel count and side, kept within 16-64 px."""
    if spec.fits_pictures and (d.channels is None or d.img_size is None):
        channels, side = probe_pictures(samples.paths)
        return d.channels or channels, d.img_size or min(64, max(16, side))
    return d.channels or spec.channels, d.img_size or spec.size_for(model_args)


def _split(d: DataConfig, decoded: DecodedImages, folder: RunFolder, resuming: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the decoded pictures: saved split on resume, else K-fold or a seeded split."""
    assigned = folder.read_split() if resuming else None
    if assigned is None and d.split_file:
        # The saved split wins over re-splitting, so pictures added since cannot leak into training.
        if not Path(d.split_file).is_file():
            raise UserError(f"Received: split file {d.split_file}; expected a split.csv written by imgcls train")
        assigned = read_split(Path(d.split_file))
    if assigned is not None:
        return tuple(np.asarray([i for i, p in enumerate(decoded.paths) if assigned.get(p) == side], dtype=np.int64)
                     for side in ("train", "val"))
    labels = decoded.labels.numpy()
    if d.folds > 1:
        return kfold_indices(labels, d.folds, d.fold, d.seed)
    return split_indices(labels, d.val_split, d.split, d.seed)


def _clean(data: DataConfig, samples: Samples, cache: CacheSettings) -> tuple[Samples, dict[str, str]]:
    """--clean: scan (as `imgcls check`), then drop the unreadable, tiny and cross-label duplicates."""
    if not data.clean:
        return samples, {}
    from .quality import paths_to_drop, scan

    rows, _ = scan(samples, min_pixels=data.min_pixels, cache=cache)
    dropped = paths_to_drop(rows)
    kept = samples.without(dropped)
    log.info("--clean dropped %d pictures (%s); uniform borders are trimmed when decoding", len(dropped),
             ", ".join(sorted(set(dropped.values()))) or "none")
    return kept, dropped


def _exclude(data: DataConfig, samples: Samples) -> tuple[Samples, list[str]]:
    """Leave out the pictures a suspects.csv names (its flagged rows, or its first `exclude_top` rows)."""
    if not data.exclude:
        return samples, []
    path = Path(data.exclude)
    if not path.is_file():
        raise UserError(f"Received: --exclude {path}; expected a CSV with a path column (e.g. suspects.csv)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "path" not in rows[0]:
        raise UserError(f"Received: --exclude {path} without a 'path' column; expected e.g. suspects.csv")
    top = data.exclude_top
    chosen = rows[:top] if top is not None else [r for r in rows if r.get("flagged", "1") in ("1", "True", "true")]
    drop = {r["path"] for r in chosen}
    kept = samples.without(drop)
    log.info("excluded %d pictures listed in %s", len(samples) - len(kept), path)
    return kept, sorted(drop & set(samples.paths))


def _require_two_classes(samples: Samples, source: str, step: str) -> None:
    """After a step that leaves pictures out: pictures of at least two classes must remain."""
    present = [name for name, n in samples.counts().items() if n]
    if len(present) < 2:
        raise UserError(f"Received: {source} where {step} leaves {len(samples)} pictures of "
                        f"{len(present)} class(es); expected pictures of at least two classes")


def _counts(decoded: DecodedImages, classes: list[str]) -> dict[str, int]:
    labels = decoded.labels.numpy()
    per_class = labels.sum(0) if labels.ndim == 2 else np.bincount(labels, minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, per_class)}
