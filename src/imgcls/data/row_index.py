"""A cache entry's index (store.py): for each picture, the (size, mtime_ns) its row was computed from
and which row of the entry's file holds it (or why none does).

Kept as arrays in one .npz file (the keys as one NUL-separated blob), so that a million pictures load
in a fraction of a second; the JSON document it replaces took seconds at ImageNet's 1.28 M. The file
is replaced atomically and is the entry's commit point. An entry whose index is still index.json (an
older imgcls) is read from it and written in this format at its next change.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

INDEX = "index.npz"
LEGACY_INDEX = "index.json"  # imgcls before the million-picture index
MISSING = -1  # the signature of a picture that could not be stat'ed: always computed again


def index_file(folder: Path) -> Path:
    """The entry's index file as it is on disk (the legacy one where only that exists)."""
    path = folder / INDEX
    return path if path.is_file() or not (folder / LEGACY_INDEX).is_file() else folder / LEGACY_INDEX


class Keys:
    """A lookup's paths as the index's keys (absolute paths): one NUL-terminated blob, built at C speed,
    and the strings themselves only where needed (new or changed pictures, skipped ones)."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        prefix = os.getcwd().rstrip("/") + "/"  # what os.path.join does for a relative path
        raw = "\0".join(paths)
        if paths and not raw.startswith("/") and "\0/" not in raw:  # all relative
            text = prefix + ("\0" + prefix).join(paths) + "\0"
        elif paths and raw.startswith("/") and raw.count("\0/") == len(paths) - 1:  # all absolute
            text = raw + "\0"
        else:
            text = "".join(p + "\0" if p.startswith("/") else prefix + p + "\0" for p in paths)
        self.blob = text.encode("utf-8", "surrogateescape")
        self._prefix = prefix

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        path = self.paths[i]
        return path if path.startswith("/") else self._prefix + path

    def strings(self) -> list[str]:
        return self.blob.decode("utf-8", "surrogateescape").split("\0")[:-1]


class RowIndex:
    """Keys (absolute paths) → signature, row (-1: none) and the reason a key has no row."""

    def __init__(self, settings: dict, rows: int = 0, blob: bytes = b"",
                 signatures: np.ndarray | None = None, row_of: np.ndarray | None = None,
                 reasons: dict[str, str] | None = None):
        self.settings = settings
        self.rows = rows  # rows committed in the entry's file
        self.blob = blob  # the keys, each followed by NUL
        self.signatures = np.zeros((0, 2), np.int64) if signatures is None else signatures
        self.row_of = np.zeros(0, np.int64) if row_of is None else row_of
        self.reasons = reasons or {}
        self._position: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.row_of)

    @property
    def keys(self) -> list[str]:
        return self.blob.decode("utf-8", "surrogateescape").split("\0")[:-1]

    def positions(self, keys: Keys) -> np.ndarray:
        """Each key's place in the index, -1 where it has none. Keys that are a run of the index's own,
        in its order (the same folder looked up again, or one of the folders it holds), are found with
        one search of the blob; others through a dictionary of every key."""
        if not len(keys):
            return np.zeros(0, np.int64)
        at = self.blob.find(keys.blob)
        while at > 0 and self.blob[at - 1] != 0:  # not at a key's start: look further
            at = self.blob.find(keys.blob, at + 1)
        if at >= 0:
            start = self.blob.count(b"\0", 0, at)
            return np.arange(start, start + len(keys), dtype=np.int64)
        if self._position is None:
            self._position = {k: i for i, k in enumerate(self.keys)}
        get = self._position.get
        return np.fromiter((get(k, -1) for k in keys.strings()), dtype=np.int64, count=len(keys))

    def stale(self, positions: np.ndarray, signatures: np.ndarray) -> np.ndarray:
        """Indices into a lookup's keys (at `positions`) of those that are new, changed since their row
        was computed, or missing."""
        known = positions >= 0
        same = np.zeros(len(positions), dtype=bool)
        same[known] = (self.signatures[positions[known]] == signatures[known]).all(axis=1)
        same &= signatures[:, 0] != MISSING
        return np.flatnonzero(~same)

    def update(self, keys: list[str], positions: np.ndarray, signatures: np.ndarray, rows: np.ndarray,
               reasons: list[str | None]) -> np.ndarray:
        """Record keys computed again (at their `positions`) or for the first time (position -1: appended);
        returns every key's place."""
        positions = positions.copy()
        added: dict[str, int] = {}  # a key listed twice is one entry
        for j in np.flatnonzero(positions < 0):
            positions[j] = added.setdefault(keys[j], len(self) + len(added))
        self.blob += "".join(k + "\0" for k in added).encode("utf-8", "surrogateescape")
        self.signatures = np.concatenate([self.signatures, np.zeros((len(added), 2), np.int64)])
        self.row_of = np.concatenate([self.row_of, np.full(len(added), -1, np.int64)])
        self.signatures[positions] = signatures
        self.row_of[positions] = rows
        for key, reason in zip(keys, reasons):
            if reason is None:
                self.reasons.pop(key, None)
            else:
                self.reasons[key] = reason
        self._position = None
        return positions

    # -- on disk ---------------------------------------------------------------------------------
    def write(self, folder: Path) -> None:
        meta = {**self.settings, "rows": self.rows, "reasons": self.reasons}
        tmp = folder / f".{INDEX}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                     keys=np.frombuffer(self.blob, np.uint8), signatures=self.signatures, rows=self.row_of)
        os.replace(tmp, folder / INDEX)
        (folder / LEGACY_INDEX).unlink(missing_ok=True)  # migrated

    @classmethod
    def read(cls, folder: Path) -> "RowIndex | None":
        """The committed index, or None where there is none. Raises ValueError (or OSError) when it is
        damaged."""
        path = index_file(folder)
        if not path.is_file():
            return None
        if path.name == LEGACY_INDEX:
            return cls._from_legacy(json.loads(path.read_text(encoding="utf-8")))
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes())
                blob, signatures, row_of = z["keys"].tobytes(), z["signatures"], z["rows"]
        except (KeyError, zipfile.BadZipFile, EOFError) as error:
            raise ValueError(str(error)) from None
        if blob.count(b"\0") != len(row_of) or len(signatures) != len(row_of) or signatures.shape[1:] != (2,):
            raise ValueError("arrays of different lengths")
        rows, reasons = meta.pop("rows"), meta.pop("reasons")
        return cls(meta, rows, blob, signatures.astype(np.int64), row_of.astype(np.int64), reasons)

    @classmethod
    def _from_legacy(cls, index: dict) -> "RowIndex":
        pictures = index.pop("pictures")
        rows = index.pop("rows")
        entries = list(pictures.values())
        signatures = np.asarray([e[:2] for e in entries], dtype=np.int64).reshape(-1, 2)
        row_of = np.asarray([e[2] for e in entries], dtype=np.int64)
        reasons = {k: e[3] for k, e in pictures.items() if e[2] < 0 and e[3] is not None}
        blob = "".join(k + "\0" for k in pictures).encode("utf-8", "surrogateescape")
        return cls(index, rows, blob, signatures, row_of, reasons)
