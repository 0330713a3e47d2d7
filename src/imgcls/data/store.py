"""The persistent decoded cache: decoded uint8 pictures in a memory-mapped file on disk, shared by every
command, process and rank (FFCV's pre-decoded RAW file and tf.data's cache-to-file, with no separate
"write the dataset" step).

One entry per decoding setting (channels, side, border trimming, resize mode) under the cache folder
(--cache-dir, else $IMGCLS_CACHE_DIR, else $XDG_CACHE_HOME/imgcls, else ~/.cache/imgcls):

    decoded-3x32-<key>/pixels.u8    rows of (C, H, W) uint8, appended, never rewritten in place
    decoded-3x32-<key>/index.json   path → size, mtime, row (or the reason it did not decode)
    decoded-3x32-<key>/lock         held while one process appends; the others wait, then read

A picture is decoded again only when its size or modification time changed. index.json is the
commit point: it is replaced atomically after the new rows are on disk, so rows a killed writer left
beyond it are ignored (and cut off by the next writer); a pixel file shorter than its index says, or
an index of another format, is detected and the entry rebuilt, never read as pixels. Readers map
the file read-only (copy-on-write), so training reads batches from it and resident memory does not
grow with the number of pictures: the page cache holds what fits.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

FORMAT = "imgcls-decoded/1"
DEFAULT_MAX_GB = 20.0  # least recently used entries are evicted beyond this


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("IMGCLS_CACHE_DIR"):
        return Path(os.environ["IMGCLS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgcls"


@dataclass(frozen=True)
class CacheSettings:
    """Where the decoded cache lives and how large it may grow; enabled=False decodes in memory."""

    enabled: bool = True
    cache_dir: str | None = None
    max_gb: float = DEFAULT_MAX_GB

    @property
    def root(self) -> Path:
        return cache_root(self.cache_dir)


def _signature(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


class DecodedStore:
    """One cache entry: every picture ever decoded with one setting, one row each."""

    def __init__(self, root: Path, channels: int, size: int, trim: bool, resize: str = "squash",
                 max_gb: float = DEFAULT_MAX_GB):
        self.root, self.max_gb = root, max_gb  # the whole cache is kept within max_gb after this entry grows
        self.settings = {"format": FORMAT, "channels": channels, "size": size, "trim": trim, "resize": resize}
        key = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = root / f"decoded-{channels}x{size}{'-trim' if trim else ''}-{key}"
        self.row_shape = (channels, size, size)
        self.row_bytes = channels * size * size

    # -- the index ------------------------------------------------------------------------------
    def _read_index(self) -> dict:
        """The committed index, or an empty one when the entry is missing, foreign or damaged."""
        path = self.dir / "index.json"
        empty = {**self.settings, "rows": 0, "pictures": {}}
        if not path.is_file():
            return empty
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            consistent = all(index.get(k) == v for k, v in self.settings.items())
            pixels = self.dir / "pixels.u8"
            size = pixels.stat().st_size if pixels.is_file() else 0
            if consistent and size >= index["rows"] * self.row_bytes:
                return index
            reason = "of another imgcls version or setting" if not consistent else "with a truncated pixel file"
        except (OSError, ValueError, KeyError, TypeError):
            reason = "with an unreadable index"
        log.warning("decoded cache: %s is %s; rebuilding it", self.dir, reason)
        return empty

    def _write_index(self, index: dict) -> None:
        tmp = self.dir / f".index.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(index), encoding="utf-8")
        os.replace(tmp, self.dir / "index.json")

    @contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # other processes (tune trials, torchrun ranks) wait here
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _stale(index: dict, paths: list[str], signatures: list) -> list[int]:
        pictures = index["pictures"]
        return [i for i, (p, sig) in enumerate(zip(paths, signatures))
                if p not in pictures or sig is None or pictures[p][:2] != sig]

    # -- use -------------------------------------------------------------------------------------
    def lookup(self, paths: list[str], desc: str = "decoding") -> tuple[np.ndarray, list[dict[str, str]]]:
        """Rows for `paths` (-1 where a picture does not decode) and the skipped ones with their reasons,
        decoding only the pictures that are new or changed since they were cached."""
        cwd = os.getcwd()
        keys = [p if p.startswith("/") else os.path.join(cwd, p) for p in paths]  # abspath: 10x slower
        signatures = [_signature(k) for k in keys]  # one stat each: threads were slower (the GIL)
        index = self._read_index()
        stale = self._stale(index, keys, signatures)
        if stale:
            with self._locked():
                index = self._read_index()  # another process may have decoded them while we waited
                stale = self._stale(index, keys, signatures)
                if stale:
                    index = self._append(index, [keys[i] for i in stale], [signatures[i] for i in stale], desc)
            evict(self.root, self.max_gb, keep=self.dir)
        else:
            log.info("decoded cache: all %d pictures already decoded in %s", len(paths), self.dir)
        os.utime(self.dir / "index.json")  # last use, for least-recently-used eviction
        self._rows = index["rows"]
        entries = [index["pictures"][k] for k in keys]
        rows = np.array([e[2] for e in entries], dtype=np.int64)
        skipped = [{"path": p, "reason": e[3]} for p, e in zip(paths, entries) if e[2] < 0]
        return rows, skipped

    def _append(self, index: dict, paths: list[str], signatures: list, desc: str) -> dict:
        from .dataset import decode_chunks

        start_time = time.perf_counter()
        rows = index["rows"]
        pixels = self.dir / "pixels.u8"
        with open(pixels, "a+b") as f:
            f.truncate(rows * self.row_bytes)  # rows a killed writer left beyond the index
            try:
                for start, array, reasons in decode_chunks(paths, *self.row_shape[::2], desc,
                                                          trim=self.settings["trim"]):
                    good = [j for j, r in enumerate(reasons) if r is None]
                    f.write(np.ascontiguousarray(array[good]).tobytes())
                    for j, reason in enumerate(reasons):
                        path = paths[start + j]
                        row = -1
                        if reason is None:
                            row, rows = rows, rows + 1
                        else:
                            log.warning("skipped %s: %s", path, reason)
                        index["pictures"][path] = [*(signatures[start + j] or [0, 0]), row, reason]
                f.flush()
                os.fsync(f.fileno())
            except OSError as error:
                f.truncate(index["rows"] * self.row_bytes)  # no partial entry
                if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    needed = len(paths) * self.row_bytes / 2**20
                    raise UserError(f"Received: a full disk while caching decoded pictures in {self.dir} "
                                    f"({needed:,.0f} MB needed); expected free space there, or --cache-dir "
                                    "elsewhere, or --no-cache") from None
                raise
        index["rows"] = rows
        self._write_index(index)
        log.info("decoded cache: decoded %d new or changed pictures in %.1f s into %s", len(paths),
                 time.perf_counter() - start_time, self.dir)
        return index

    def array(self) -> np.ndarray:
        """Every row, memory-mapped copy-on-write: reads come from the page cache, nothing is loaded."""
        rows = getattr(self, "_rows", None)
        rows = self._read_index()["rows"] if rows is None else rows
        if rows == 0:
            return np.zeros((0, *self.row_shape), dtype=np.uint8)
        return np.memmap(self.dir / "pixels.u8", dtype=np.uint8, mode="c", shape=(rows, *self.row_shape))


# -- the cache folder as a whole ----------------------------------------------------------------

def list_entries(root: Path, count: bool = True) -> list[dict]:
    """Every entry: name, pictures (when `count`: it reads the index), bytes on disk, seconds since last use."""
    entries = []
    for folder in sorted(root.glob("decoded-*")) if root.is_dir() else []:
        index = folder / "index.json"
        try:
            pictures = len(json.loads(index.read_text(encoding="utf-8"))["pictures"]) if count else None
            used = index.stat().st_mtime
        except (OSError, ValueError, KeyError):
            pictures, used = 0, folder.stat().st_mtime
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        entries.append({"name": folder.name, "path": str(folder), "pictures": pictures, "bytes": size,
                        "age_s": time.time() - used})
    return entries


def clear(root: Path, older_than_days: float | None = None, keep: Path | None = None) -> list[dict]:
    """Delete the entries unused for longer than `older_than_days` (all when None); returns them."""
    removed = []
    for entry in list_entries(root):
        if Path(entry["path"]) == keep or (older_than_days is not None and entry["age_s"] < older_than_days * 86400):
            continue
        shutil.rmtree(entry["path"], ignore_errors=True)
        removed.append(entry)
    return removed


def evict(root: Path, max_gb: float, keep: Path) -> None:
    """Delete least recently used entries until the cache is within `max_gb` (never `keep`)."""
    entries = sorted(list_entries(root, count=False), key=lambda e: -e["age_s"])  # oldest use first
    total = sum(e["bytes"] for e in entries)
    for entry in entries:
        if total <= max_gb * 2**30:
            break
        if Path(entry["path"]) != keep:
            shutil.rmtree(entry["path"], ignore_errors=True)
            total -= entry["bytes"]
            log.info("decoded cache: evicted %s (%.0f MB, over the %.0f GB cap)", entry["name"],
                     entry["bytes"] / 2**20, max_gb)
