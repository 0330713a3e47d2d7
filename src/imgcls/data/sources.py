"""Every data source returns the same thing: Samples(paths, labels, classes), plus what it skipped.

Layouts: class folders, a CSV of ids beside a folder of <id><ext> pictures, labels in file names,
and scikit-learn's bundled digits (written once as PNG class folders, so it is just another folder).
"""
from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .archives import archive_files, archive_kind, list_table_samples
from .builtin import BUILTIN, builtin, resolve_source  # noqa: F401 (builtin: part of this module's API)
from .listing import IMAGE_EXTENSIONS, Listing, list_shard_samples, list_tree

log = logging.getLogger(__name__)


@dataclass
class Samples:
    """Pictures with integer labels; `classes[label]` is the class name. `skipped` lists {path, reason}.
    Several labels per picture (--multi-label): `labels` is a multi-hot (N, K) uint8 matrix instead."""

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    # The labels as the data spells them, when --class-names renamed the classes (CSV labels 0..9 →
    # T-shirt/top, ...); same order as `classes`. A later evaluate matches the data's labels by these.
    given_classes: list[str] | None = None
    # Each picture's (size, mtime_ns) as its listing found them (listing.py), which the decoded cache
    # compares with its index instead of stat'ing each picture again; None: the cache stats them.
    signatures: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> "Samples":
        return Samples([self.paths[i] for i in indices], self.labels[indices], self.classes, [], self.given_classes,
                       None if self.signatures is None else self.signatures[indices])

    def renamed(self, names: list[str]) -> "Samples":
        """The same samples with their classes called `names` (one per class, in class order)."""
        return Samples(self.paths, self.labels, list(names), self.skipped, self.given_classes or self.classes,
                       self.signatures)

    def without(self, paths: set[str] | dict[str, str]) -> "Samples":
        """The same samples less `paths`; the list of skipped files is kept."""
        keep = np.asarray([i for i, p in enumerate(self.paths) if p not in paths], dtype=np.int64)
        kept = self.subset(keep)
        kept.skipped = self.skipped
        return kept

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def counts(self) -> dict[str, int]:
        """Pictures per class (for several labels per picture: pictures carrying each label)."""
        per_class = (self.labels.sum(0) if self.multi_label else np.bincount(self.labels, minlength=len(self.classes)))
        return {name: int(n) for name, n in zip(self.classes, per_class)}


def id_sort_key(name: str) -> tuple[int, int | str]:
    """Numeric ids sort numerically (2 before 10), other names alphabetically after them."""
    stem = Path(name).stem
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def _existing_dir(path: str | Path, what: str = "DATA") -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"Received: {what} {path}; expected an existing folder of pictures")
    if not path.is_dir():
        raise UserError(f"Received: {what} {path} (a file); expected a folder of pictures")
    return path


def _class_order(names: set[str]) -> list[str]:
    # Integer labels ("0".."9") sort numerically, other names alphabetically, as Keras and torchvision do.
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _to_samples(pairs: list[tuple[str, str]], skipped: list[dict[str, str]], classes: list[str] | None,
                signatures: np.ndarray | None = None) -> Samples:
    """(path, label) pairs (with their listing's signatures, where known) → Samples over `classes` (by
    default the labels present); a label outside `classes` leaves its picture out, listed in skipped."""
    names = classes if classes is not None else _class_order({label for _, label in pairs})
    index = {name: i for i, name in enumerate(names)}
    kept, labels = [], []
    for position, (path, label) in enumerate(pairs):
        if label not in index:
            skipped.append({"path": path, "reason": f"class {label!r} is not one of the run's classes"})
            continue
        kept.append(position)
        labels.append(index[label])
    return Samples([pairs[k][0] for k in kept], np.asarray(labels, dtype=np.int64), list(names), skipped,
                   signatures=None if signatures is None else signatures[np.asarray(kept, dtype=np.int64)])


def from_folder(root: str | Path, classes: list[str] | None = None) -> Samples:
    """Class folders: one sub-folder per class, names sorted; pictures anywhere below each."""
    root = _existing_dir(root)
    listing = list_tree(root, by_class=True)
    if not listing.paths:
        loose = list_tree(root).paths
        hint = (" (pictures lie directly in it: give --labels CSV or --label-pattern REGEX)" if loose else "")
        raise UserError(f"Received: DATA {root} with no pictures in class sub-folders{hint}; "
                        "expected one sub-folder of pictures per class")
    return _by_group(listing, classes, list(listing.skipped))


def _by_group(listing: Listing, classes: list[str] | None, skipped: list[dict[str, str]]) -> Samples:
    """A listing's pictures labelled by their group (class folder, or a shard sample's label; -1: none, left
    out) over `classes` (by default the groups present), with numpy: a million pictures would take a Python
    loop a third of a second. A group outside `classes` leaves its pictures out, listed in skipped."""
    present = np.unique(listing.groups[listing.groups >= 0])
    names = classes if classes is not None else _class_order({listing.group_names[g] for g in present})
    index = {name: i for i, name in enumerate(names)}
    # the last entry: what group -1 (no label) maps to
    labels = np.asarray([index.get(name, -1) for name in listing.group_names] + [-1], dtype=np.int64)[listing.groups]
    outside = np.flatnonzero((labels < 0) & (listing.groups >= 0))
    skipped += [{"path": listing.paths[i], "reason": f"class {listing.group_names[listing.groups[i]]!r} is not one "
                 "of the run's classes"} for i in outside]
    if (labels < 0).any():
        kept = np.flatnonzero(labels >= 0)
        return Samples([listing.paths[i] for i in kept], labels[kept], list(names), skipped,
                       signatures=listing.signatures[kept])
    return Samples(listing.paths, labels, list(names), skipped, signatures=listing.signatures)


def _one_row_per_id(rows: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """The rows with each id once (a repeated id with the same label is one picture), and the ids
    listed with different labels → those labels (they are in no row)."""
    labels_of: dict[str, list[str]] = {}
    for picture_id, label in rows:
        seen = labels_of.setdefault(picture_id, [])
        if label not in seen:
            seen.append(label)
    conflicts = {i: labels for i, labels in labels_of.items() if len(labels) > 1}
    return [(i, labels[0]) for i, labels in labels_of.items() if i not in conflicts], conflicts


def from_csv(root: str | Path, labels_csv: str | Path, id_col: str = "id", label_col: str = "label",
             ext: str | None = None, classes: list[str] | None = None, clean: bool = False,
             multi_label: bool = False, label_sep: str = " ") -> Samples:
    """A CSV of id,label beside a folder of <id><ext> pictures; ids without a picture are skipped. An id
    listed with two different labels is an error, or with `clean` left out and listed in skipped.
    multi_label: the label cell holds several labels separated by `label_sep` (Planet's
    `image_name,tags`), or none (a picture of no class); the classes are the sorted vocabulary."""
    root = _existing_dir(root)
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise UserError(f"Received: --labels {labels_csv}; expected an existing CSV file")
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for col, flag in ((id_col, "--id-col"), (label_col, "--label-col")):
            if col not in columns:
                raise UserError(f"Received: {flag} {col!r}, not a column of {labels_csv}; "
                                f"expected one of {', '.join(columns) or '(no header)'}")
        rows = [(row[id_col].strip(), (row[label_col] or "").strip()) for row in reader]
    if multi_label:  # one spelling per label set, so that "b a" and "a b" are the same labels
        rows = [(i, label_sep.join(sorted({t.strip() for t in cell.split(label_sep) if t.strip()})))
                for i, cell in rows]
    rows, conflicts = _one_row_per_id(rows)
    if conflicts and not clean:
        picture_id, labels = next(iter(conflicts.items()))
        more = f" (and {len(conflicts) - 1} more ids)" if len(conflicts) > 1 else ""
        raise UserError(f"Received: id {picture_id!r} listed in {labels_csv} with two labels, "
                        f"{' and '.join(map(repr, labels))}{more}; expected one label per id (fix the CSV, or "
                        "--clean to leave such ids out)")
    listing = list_tree(root)
    names = [os.path.basename(p) for p in listing.paths]
    if ext is not None:
        ext = ext if ext.startswith(".") else "." + ext
        by_id = {name[: -len(ext)]: k for k, name in enumerate(names) if name.lower().endswith(ext.lower())}
    else:
        by_id = {os.path.splitext(name)[0]: k for k, name in enumerate(names)}
    pairs, positions, skipped = [], [], []
    for picture_id, labels in conflicts.items():
        skipped.append({"path": str(root / f"{picture_id}{ext or '.*'}"),
                        "reason": f"id listed with two labels in the CSV ({' and '.join(map(repr, labels))})"})
    for picture_id, label in rows:
        position = by_id.get(picture_id)
        if position is None:
            skipped.append({"path": str(root / f"{picture_id}{ext or '.*'}"), "reason": "id in CSV has no picture"})
        else:
            pairs.append((listing.paths[position], label))
            positions.append(position)
    signatures = listing.signatures[np.asarray(positions, dtype=np.int64)]
    if not pairs:
        raise UserError(f"Received: {len(rows)} ids in {labels_csv}, none with a picture in {root}; "
                        f"expected files named <id>{ext or '.<ext>'} (set --ext if they differ)")
    if multi_label:
        samples = _to_multi_label_samples(pairs, skipped, classes, label_sep, labels_csv)
        samples.signatures = signatures
        return samples
    return _to_samples(pairs, skipped, classes, signatures)


def _to_multi_label_samples(pairs: list[tuple[str, str]], skipped: list[dict[str, str]], classes: list[str] | None,
                            sep: str, where: Path) -> Samples:
    """(path, "a b") pairs → a multi-hot matrix over the sorted vocabulary (or the run's `classes`: a
    label outside them is left out of that picture and listed)."""
    cells = [[t for t in cell.split(sep) if t] for _, cell in pairs]
    if classes is None:
        seen: dict[str, int] = {}
        for labels in cells:
            for label in labels:
                seen[label] = seen.get(label, 0) + 1
        if len(seen) < 2:
            raise UserError(f"Received: {where} whose label cells hold {len(seen)} distinct label(s) "
                            f"({', '.join(seen) or 'none'}); expected at least two (with --label-sep "
                            f"{sep!r}: is that the separator the cells use?)")
        once = sorted(label for label, n in seen.items() if n == 1)
        if once:
            raise UserError(f"Received: label {once[0]!r} on one picture only in {where}"
                            f"{f' (and {len(once) - 1} more)' if len(once) > 1 else ''}; expected each label on "
                            "at least two pictures (one to train on, one to validate), or fix a typo")
        classes = _class_order(set(seen))
    index = {name: k for k, name in enumerate(classes)}
    hot = np.zeros((len(pairs), len(classes)), dtype=np.uint8)
    for row, ((path, _), labels) in enumerate(zip(pairs, cells)):
        for label in labels:
            if label in index:
                hot[row, index[label]] = 1
            else:
                skipped.append({"path": path, "reason": f"label {label!r} is not one of the run's classes (left out)"})
    return Samples([p for p, _ in pairs], hot, list(classes), skipped)


def from_filenames(root: str | Path, pattern: str, classes: list[str] | None = None) -> Samples:
    """Labels in file names: the first group of `pattern` (searched in the file name) is the label."""
    root = _existing_dir(root)
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise UserError(f"Received: --label-pattern {pattern!r}, not a valid regex ({error})") from None
    if regex.groups < 1:
        raise UserError(f"Received: --label-pattern {pattern!r} without a group; expected one, e.g. '^(cat|dog)\\.'")
    listing = list_tree(root)
    pairs, positions, skipped = [], [], list(listing.skipped)
    for position, path in enumerate(listing.paths):
        match = regex.search(os.path.basename(path))
        if match and match.group(1):
            pairs.append((path, match.group(1)))
            positions.append(position)
        else:
            skipped.append({"path": path, "reason": "file name does not match --label-pattern"})
    if not pairs:
        raise UserError(f"Received: --label-pattern {pattern!r} that matches no file name in {root}; "
                        "expected a regex whose first group is the label")
    return _to_samples(pairs, skipped, classes, listing.signatures[np.asarray(positions, dtype=np.int64)])


def load_samples(source: str, labels: str | None = None, id_col: str = "id", label_col: str = "label",
                 ext: str | None = None, label_pattern: str | None = None,
                 classes: list[str] | None = None, clean: bool = False, multi_label: bool = False,
                 label_sep: str = " ", image_col: str = "image", label_key: str = "label") -> Samples:
    """The one entry point: picks the layout from the arguments given. `clean`: leave out (and list)
    what is ambiguous, such as an id with two labels, instead of stopping. Shards (WebDataset tars,
    parquet, save_to_disk folders: archives.py) hold their labels beside each picture."""
    if labels and label_pattern:
        raise UserError("Received: both --labels and --label-pattern; expected at most one")
    kind = None if labels or label_pattern else archive_kind(source)
    if kind is not None:
        return from_archive(source, kind, classes, image_col=image_col, label_col=label_col, label_key=label_key)
    root = resolve_source(source)
    if labels:
        return from_csv(root, labels, id_col, label_col, ext, classes, clean, multi_label, label_sep)
    if multi_label:
        raise UserError("Received: --multi-label without --labels; expected a CSV whose label cell holds each "
                        "picture's labels (class folders and file names hold one label per picture)")
    if label_pattern:
        return from_filenames(root, label_pattern, classes)
    return from_folder(root, classes)


def from_archive(source: str, kind: str, classes: list[str] | None = None, *, image_col: str = "image",
                 label_col: str = "label", label_key: str = "label") -> Samples:
    """Pictures in shards with their labels: a WebDataset sample's .cls, .txt or .json[label_key], or a
    table's `label_col` (named by Hugging Face's ClassLabel names where the files carry them). A picture
    without a label, a damaged member or a truncated shard is listed in skipped."""
    files = archive_files(source, kind)
    if kind == "tar":
        listing = list_shard_samples(files, label_key)
        unlabelled = np.flatnonzero(listing.groups < 0)
        if len(unlabelled) == len(listing.paths):
            raise _no_labelled_picture(source, files)
        return _by_group(listing, classes, list(listing.skipped) + [
            {"path": listing.paths[i], "reason": f"no label beside the picture (.cls, .txt or .json {label_key!r})"}
            for i in unlabelled])
    found, skipped, _ = list_table_samples(files, image_col, label_col)
    pairs = []
    for path, label in found:
        if label is None:
            skipped.append({"path": path, "reason": "no label"})
        else:
            pairs.append((path, label))
    if not pairs:
        raise _no_labelled_picture(source, files)
    return _to_samples(pairs, skipped, classes)


def _no_labelled_picture(source: str, files: list[str]) -> UserError:
    return UserError(f"Received: DATA {source} with no labelled picture in {len(files)} shard file(s); expected "
                     "pictures with a label beside them (WebDataset: <key>.jpg + <key>.cls; tables: --image-col "
                     "and --label-col)")


def outlier_paths(folder: str | Path) -> list[str]:
    """The pictures of an --outliers folder (pictures known to be outside the classes)."""
    try:
        return list_pictures(folder)[0]
    except UserError:
        raise UserError(f"Received: --outliers {folder} with no pictures; expected a folder of pictures outside "
                        "the classes") from None


def list_pictures(path: str | Path, image_col: str = "image") -> tuple[list[str], list[dict[str, str]]]:
    """Pictures to predict: one file, or every picture under a folder, sorted by id; in shards, every
    picture in their order."""
    kind = archive_kind(str(path))
    if kind is not None:
        files = archive_files(str(path), kind)
        if kind == "tar":
            listing = list_shard_samples(files)
            return listing.paths, list(listing.skipped)
        found, skipped, _ = list_table_samples(files, image_col, None)
        return [p for p, _ in found], skipped
    path = Path(path)
    if path.is_file():
        return [str(path)], []
    listing = list_tree(_existing_dir(path, "IMAGES"))
    pictures, skipped = listing.paths, list(listing.skipped)
    if not pictures:
        raise UserError(f"Received: IMAGES {path} with no pictures; expected files ending in "
                        f"{', '.join(IMAGE_EXTENSIONS)}")
    return sorted(pictures, key=lambda p: (id_sort_key(p), p)), skipped
