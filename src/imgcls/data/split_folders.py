"""A dataset root already split on disk: `train/`, `val/` (or `valid/`, `validation/`) and `test/`, each
holding the same class folders (ImageNet, Ultralytics' classify layout, fastai's
`from_folder(train='train', valid='valid')`). Read as class folders, such a root would be two or three
classes named after the splits; here it is read as the splits it is.

A root is taken as split folders only when every top folder is named like a split, one is `train`, and
`train/` holds at least two sub-folders and no loose picture: `train/` and `test/` folders that hold
pictures themselves are classes, as before.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..errors import UserError
from .builtin import resolve_source
from .listing import IMAGE_EXTENSIONS, is_clutter

log = logging.getLogger(__name__)

# Folder name (any case) → the split it holds.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class SplitFolders:
    """The split folders found under `root`; `val` and `test` are None where the root has none."""

    root: Path
    train: Path
    val: Path | None
    test: Path | None


def _subfolders(folder: Path) -> tuple[list[str], bool]:
    """(names of the sub-folders, whether a picture lies directly in `folder`), clutter left out."""
    folders, loose = [], False
    with os.scandir(folder) as entries:
        for entry in entries:
            if is_clutter(entry.name):
                continue
            if entry.is_dir():
                folders.append(entry.name)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                loose = True
    return sorted(folders), loose


def find_split_folders(root: str | Path) -> SplitFolders | None:
    """The root's split folders, or None where it is not split on disk. Splits whose class folders differ
    from train's are an error naming the difference."""
    root = Path(root)
    if not root.is_dir():
        return None
    tops, _ = _subfolders(root)
    if not tops or any(name.lower() not in SPLIT_NAMES for name in tops):
        return None
    by_split: dict[str, Path] = {}
    for name in tops:
        split = SPLIT_NAMES[name.lower()]
        if split in by_split:
            raise UserError(f"Received: DATA {root} with two {split} folders ({by_split[split].name}/ and "
                            f"{name}/); expected one folder per split")
        by_split[split] = root / name
    if "train" not in by_split:
        return None
    train_classes, loose = _subfolders(by_split["train"])
    if loose or len(train_classes) < 2:
        return None
    for split in ("val", "test"):
        if split in by_split:
            _require_same_classes(by_split["train"], train_classes, by_split[split])
    return SplitFolders(root, by_split["train"], by_split.get("val"), by_split.get("test"))


def _require_same_classes(train: Path, train_classes: list[str], other: Path) -> None:
    classes, _ = _subfolders(other)
    only_train = sorted(set(train_classes) - set(classes))
    only_other = sorted(set(classes) - set(train_classes))
    if only_train or only_other:
        differences = [f"only in {train.name}/: {', '.join(only_train)}" if only_train else "",
                       f"only in {other.name}/: {', '.join(only_other)}" if only_other else ""]
        raise UserError(f"Received: split folders {train.name}/ and {other.name}/ under {train.parent} with different "
                        f"class folders ({'; '.join(d for d in differences if d)}); expected the same classes in each")


def for_training(data: DataConfig) -> DataConfig:
    """`data` reading a split root's `train/` and validating on its `val/` (instead of --val-split);
    unchanged for any other source. Only class folders are split this way: with --labels or
    --label-pattern the source is read as given. With --folds the folds are the validation, and with
    --val or a split file those decide it."""
    if data.labels or data.label_pattern:
        return data
    found = find_split_folders(resolve_source(data.source))
    if found is None:
        return data
    val = data.val
    if val is None and found.val is not None and data.folds < 2 and not data.split_file:
        val = str(found.val)
    if val:
        where = f"validating on {val}"
    elif data.folds > 1:
        where = f"validating on each of {data.folds} folds of it"
    else:
        where = f"validating on {'its split file' if data.split_file else f'a {data.val_split:g} split'} of it"
    test = f"; {found.test.name}/ is held out for `imgcls evaluate RUN {data.source}`" if found.test else ""
    log.info("%s holds split folders: training on %s, %s%s", data.source, found.train, where, test)
    return dataclasses.replace(data, source=str(found.train), val=val)


def for_scoring(source: str) -> str:
    """The folder `evaluate` scores: a split root's `test/` (else its `val/`), or `source` itself."""
    found = find_split_folders(resolve_source(source))
    if found is None:
        return source
    if found.test is not None:
        log.info("%s holds split folders: scoring %s", source, found.test)
        return str(found.test)
    if found.val is not None:
        log.warning("%s holds split folders but no test/: scoring %s, the pictures a run trained on it "
                    "validated on (not held out)", source, found.val)
        return str(found.val)
    raise UserError(f"Received: DATA {source} holding only a {found.train.name}/ split; expected a test/ or val/ "
                    "folder to score (or give the folder of pictures to score)")
