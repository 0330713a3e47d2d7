"""Pictures inside shards: WebDataset tars, parquet files (the Hugging Face hub's layout) and folders
written by `datasets.save_to_disk`.

A picture inside one is named by a virtual path, `<file>::<member>` (a tar member's name, or
`<image column>/<row>`), which every command passes around like a file path: the decoded cache keys it by the file's
size and modification time and the member (store._signature), and decoding reads its bytes through
`picture_file`. Each process keeps an index per tar (member → offset, size) and the last row groups it
read per parquet file, so decoding in order reads each shard once.

    train 'shards/train-{000000..000009}.tar'   # labels from each sample's .cls, .txt or .json (--label-key)
    train data/                                 # a folder or glob of .parquet: `image` bytes, `label`
    train saved/                                # datasets.save_to_disk: data-*.arrow + dataset_info.json
"""
from __future__ import annotations

import functools
import glob
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import UserError

SEP = "::"
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
LABEL_SUFFIXES = (".cls", ".txt", ".json")  # in this order of preference


# ------------------------------------------------------------------------------------------ naming
def split_virtual(path: str) -> tuple[str, str]:
    container, _, member = path.partition(SEP)
    return container, member


def picture_id(path: str) -> str:
    """A picture's id in a submission: its file name without the extension; inside a shard, the member's
    (a tar member's name, a table's row number)."""
    name = split_virtual(path)[1] if SEP in path else path
    return Path(name).stem


def picture_ids(paths: list[str]) -> list[str]:
    """picture_id of each path, except that the rows of several table files are numbered through the
    files in their sorted order (as `datasets` numbers a split kept in several files), so that the ids of
    `train-00000-of-00002.parquet` and `train-00001-of-00002.parquet` do not repeat."""
    tables = sorted({split_virtual(p)[0] for p in paths if SEP in p and not split_virtual(p)[0].endswith(".tar")})
    if len(tables) < 2:
        return [picture_id(p) for p in paths]
    offsets = dict(zip(tables, np.cumsum([0] + [_open_table(t).rows for t in tables[:-1]]).tolist()))
    ids = []
    for path in paths:
        container, member = split_virtual(path)
        ids.append(str(offsets[container] + int(member.rpartition("/")[2])) if container in offsets
                   else picture_id(path))
    return ids


def expand_braces(pattern: str) -> list[str]:
    """`train-{000000..000009}.tar` → ten names, zero-padded as written (WebDataset's and the shell's
    brace ranges); `{a,b}` lists too; then glob patterns."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match:
        body = match.group(1)
        numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if numeric:
            first, last = numeric.groups()
            width = len(first) if first.startswith("0") else 0
            options = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
        else:
            options = body.split(",")
        return [name for option in options
                for name in expand_braces(pattern[:match.start()] + option + pattern[match.end():])]
    if any(c in pattern for c in "*?["):
        return sorted(glob.glob(pattern))
    return [pattern]


def archive_kind(source: str) -> str | None:
    """"tar", "parquet" or "arrow" (save_to_disk) when `source` names such files or a folder of them."""
    names = expand_braces(source)
    if names and all(n.endswith(".tar") for n in names):
        return "tar"
    if names and all(n.endswith(".parquet") for n in names):
        return "parquet"
    folder = Path(source)
    if not folder.is_dir():
        return None
    # Only the top level (and a hub dataset's data/) is looked at: a folder of class folders with a
    # million pictures must not be walked twice to learn that it is one.
    if (folder / "dataset_info.json").is_file() and next(folder.glob("data-*.arrow"), None) is not None:
        return "arrow"
    with os.scandir(folder) as entries:  # the entry's type, no stat per file
        subfolders = {e.name for e in entries if e.is_dir() and not e.name.startswith(".")}
    if subfolders <= {"data"} and next(folder.glob("*.parquet"), next(folder.glob("data/*.parquet"), None)):
        return "parquet"
    if not subfolders and next(folder.glob("*.tar"), None) is not None:
        return "tar"
    return None


def archive_files(source: str, kind: str) -> list[str]:
    """The shard files `source` stands for (braces and globs expanded, or a folder's), each existing."""
    folder = Path(source)
    if folder.is_dir():
        patterns = {"tar": ["*.tar"], "parquet": ["*.parquet", "data/*.parquet"], "arrow": ["data-*.arrow"]}[kind]
        files = sorted(str(p) for pattern in patterns for p in folder.glob(pattern))
    else:
        files = expand_braces(source)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing or not files:
        raise UserError(f"Received: DATA {source} naming {len(missing) or 'no'} shard file(s) that do not exist"
                        f"{' (' + missing[0] + ', ...)' if missing else ''}; expected existing .tar, .parquet or "
                        "save_to_disk files")
    return files


# ----------------------------------------------------------------------------------- reading bytes
def picture_file(path: str | BinaryIO) -> str | BinaryIO:
    """What Pillow should open: the path itself, or the bytes of a picture inside a shard."""
    if not isinstance(path, str) or SEP not in path:
        return path
    container, member = split_virtual(path)
    if container.endswith(".tar"):
        return io.BytesIO(_tar_member(container, member))
    column, _, row = member.rpartition("/")
    return io.BytesIO(_table_picture(container, column, int(row)))


def signature(path: str) -> list[int] | None:
    """(size, mtime) of the file holding `path` (the cache's staleness check; the member is in the key)."""
    container = split_virtual(path)[0] if SEP in path else path
    try:
        stat = os.stat(container)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


@functools.lru_cache(maxsize=64)
def _tar_contents(path: str, size: int, mtime: int) -> tuple[dict[str, tuple[int, int]], dict[str, bytes]]:
    """(member name → (offset of its data, size), the label members' bytes), for every member read
    before the end or a damaged header. One pass over the shard lists it and reads its labels; the
    listing is kept in the cache folder under the shard's path, size and mtime, so a later command
    reads one small file per shard instead of every header (tarfile: ~35 µs a member)."""
    import hashlib

    from .store import cache_root

    key = hashlib.sha1(json.dumps([os.path.abspath(path), size, mtime]).encode()).hexdigest()[:20]
    kept = cache_root() / "shards" / f"{key}.json"
    try:
        listing = json.loads(kept.read_text(encoding="utf-8"))
        return ({name: (offset, length) for name, offset, length in listing["members"]},
                {name: text.encode("utf-8") for name, text in listing["labels"].items()})
    except (OSError, ValueError, KeyError, TypeError):
        pass
    index, labels = _read_tar(path)
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"members": [[n, o, l] for n, (o, l) in index.items()],
                                   "labels": {n: b.decode("utf-8", "replace") for n, b in labels.items()}}),
                       encoding="utf-8")
        os.replace(tmp, kept)
    except OSError:  # a read-only cache folder: the listing is simply not kept
        pass
    return index, labels


def _read_tar(path: str) -> tuple[dict[str, tuple[int, int]], dict[str, bytes]]:
    index: dict[str, tuple[int, int]] = {}
    labels: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                index[info.name] = (info.offset_data, info.size)
                if info.name.lower().endswith(LABEL_SUFFIXES) and info.size <= 65536:
                    labels[info.name] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError):  # truncated or damaged: what was read before stays usable
        pass
    return index, labels


def tar_index(path: str) -> dict[str, tuple[int, int]]:
    stat = os.stat(path)
    return _tar_contents(path, stat.st_size, stat.st_mtime_ns)[0]


def _tar_member(path: str, member: str) -> bytes:
    from .decode import DecodeError

    try:
        offset, size = tar_index(path)[member]
    except (KeyError, OSError):
        raise DecodeError(f"no member {member} in {path} (damaged or changed shard)") from None
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) < size:
        raise DecodeError(f"member {member} of {path} is truncated ({len(data)} of {size} bytes)")
    return data


def _table_picture(path: str, image_col: str, row: int) -> bytes:
    """The picture bytes in column `image_col` of one row of a parquet or save_to_disk file."""
    from .decode import DecodeError

    table = _open_table(path)
    try:
        value = table.picture(row, image_col)
    except (IndexError, KeyError):
        raise DecodeError(f"no row {row} in {path}") from None
    if isinstance(value, dict):  # the Hugging Face Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise DecodeError(f"row {row} of {path} holds no picture bytes in column {image_col!r}")
    return bytes(value)


@functools.lru_cache(maxsize=32)
def _table(path: str, size: int, mtime: int) -> "_Table":
    return _Table(path)


def _open_table(path: str) -> "_Table":
    stat = os.stat(path)
    return _table(path, stat.st_size, stat.st_mtime_ns)


class _Table:
    """Row access to one parquet or arrow (save_to_disk) file: row groups are read when first asked for
    and the last few kept, so reading rows in order reads the file once."""

    def __init__(self, path: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        if path.endswith(".arrow"):
            with pa.memory_map(path) as source:
                self.whole = pa.ipc.open_stream(source).read_all()
            self.bounds = np.array([0, self.whole.num_rows])
        else:
            self.file = pq.ParquetFile(path)
            counts = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
            self.bounds = np.concatenate([[0], np.cumsum(counts)])
            self.whole = None
        self._groups: dict[tuple[int, str], list] = {}

    @property
    def rows(self) -> int:
        return int(self.bounds[-1])

    def picture(self, row: int, column: str):
        if not 0 <= row < self.rows:
            raise IndexError(row)
        if self.whole is not None:
            return self.whole.column(column)[row].as_py()
        group = int(np.searchsorted(self.bounds, row, side="right") - 1)
        key = (group, column)
        if key not in self._groups:
            if len(self._groups) >= 4:
                self._groups.pop(next(iter(self._groups)))
            self._groups[key] = self.file.read_row_group(group, columns=[column]).column(0).to_pylist()
        return self._groups[key][row - int(self.bounds[group])]

    def column(self, name: str) -> list:
        if self.whole is not None:
            return self.whole.column(name).to_pylist()
        return self.file.read(columns=[name]).column(0).to_pylist()

    def column_names(self) -> list[str]:
        return self.whole.column_names if self.whole is not None else self.file.schema_arrow.names

    def class_names(self, column: str) -> list[str] | None:
        """The ClassLabel names Hugging Face datasets keep in the file's metadata (or, for save_to_disk,
        its dataset_info.json), if any."""
        schema = self.whole.schema if self.whole is not None else self.file.schema_arrow
        meta = (schema.metadata or {}).get(b"huggingface")
        features = (json.loads(meta).get("info") or {}).get("features") if meta else None
        info = Path(self.path).with_name("dataset_info.json")
        if features is None and info.is_file():
            features = json.loads(info.read_text(encoding="utf-8")).get("features")
        names = ((features or {}).get(column) or {}).get("names")
        return list(names) if names else None


# -------------------------------------------------------------------------------------- listings
def list_tar_samples(files: list[str], label_key: str = "label"
                     ) -> tuple[list[tuple[str, str | None]], list[dict], list[int]]:
    """(virtual path, label or None) for each sample's picture in WebDataset shards, what was skipped, and
    the shard of each (its place in `files`): samples are the members sharing a key (the name up to its
    first dot after the last slash). listing.list_shard_samples keeps the result between commands."""
    pairs, skipped, shard_of = [], [], []
    for number, path in enumerate(files):
        stat = os.stat(path)
        index, labels = _tar_contents(path, stat.st_size, stat.st_mtime_ns)
        by_key: dict[str, dict[str, str]] = {}
        for name in index:
            folder, _, base = name.rpartition("/")
            key, dot, suffix = base.partition(".")
            by_key.setdefault(f"{folder}/{key}" if folder else key, {})["." + suffix.lower()] = name
        if not index or _truncated(path, index):
            skipped.append({"path": path, "reason": f"a damaged or truncated tar: {len(index)} members read before "
                                                    "the damage; the rest are not listed"})
        for key, members in by_key.items():
            picture = next((members[s] for s in PICTURE_SUFFIXES if s in members), None)
            if picture is None:
                continue
            label = None
            for suffix in LABEL_SUFFIXES:
                if suffix in members:
                    label = _label_text(labels.get(members[suffix]), suffix, label_key)
                    break
            pairs.append((f"{path}{SEP}{picture}", label))
            shard_of.append(number)
    return pairs, skipped, shard_of


def _truncated(path: str, index: dict[str, tuple[int, int]]) -> bool:
    end = max(offset + size for offset, size in index.values())
    return end > os.path.getsize(path)


def _label_text(data: bytes | None, suffix: str, label_key: str) -> str | None:
    try:
        text = data.decode("utf-8").strip()
    except (AttributeError, UnicodeDecodeError):  # a damaged or oversized label member: the sample has no label
        return None
    if suffix != ".json":
        return text or None
    try:
        value = json.loads(text).get(label_key)
    except (ValueError, AttributeError):
        return None
    return None if value is None else str(value)


def list_table_samples(files: list[str], image_col: str, label_col: str | None
                       ) -> tuple[list[tuple[str, str | None]], list[dict], list[str] | None]:
    """(virtual path, label or None) for each row of parquet or arrow files, what was skipped, and the
    class names the files' metadata give (Hugging Face's ClassLabel) if any."""
    pairs, skipped, names = [], [], None
    for path in files:
        table = _open_table(path)
        columns = table.column_names()
        if image_col not in columns:
            raise UserError(f"Received: {path} without an image column {image_col!r}; expected one of "
                            f"{', '.join(columns)} (set --image-col)")
        labels: list = [None] * table.rows
        if label_col is not None:
            if label_col not in columns:
                raise UserError(f"Received: {path} without a label column {label_col!r}; expected one of "
                                f"{', '.join(columns)} (set --label-col)")
            labels = table.column(label_col)
            names = names or table.class_names(label_col)
        for row, label in enumerate(labels):
            virtual = f"{path}{SEP}{image_col}/{row}"
            if label_col is not None and label is None:
                skipped.append({"path": virtual, "reason": f"no {label_col!r} in this row"})
                continue
            if names and isinstance(label, int) and 0 <= label < len(names):
                label = names[label]  # ClassLabel: the name, not its index
            pairs.append((virtual, None if label is None else str(label)))
    return pairs, skipped, names
