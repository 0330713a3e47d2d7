"""The persistent cache: fixed-size rows per picture in memory-mapped files on disk, shared by every
command, process and rank (FFCV's pre-decoded RAW file and tf.data's cache-to-file, with no separate
"write the dataset" step). Three kinds of entry use it: decoded pixels (here), a frozen backbone's
outputs (engine/feature_cache.py) and `check`'s findings (data/quality.py).

One entry per setting under the cache folder (--cache-dir, else $IMGCLS_CACHE_DIR, else
$XDG_CACHE_HOME/imgcls, else ~/.cache/imgcls):

    decoded-3x32-<key>/pixels.u8    rows of (C, H, W) uint8, appended, never rewritten in place
    decoded-3x32-<key>/index.npz    path → size, mtime, row (or the reason it has none): row_index.py
    decoded-3x32-<key>/lock         exclusive while one process appends (the others wait, then read),
                                    shared while a reader opens the entry (eviction skips it then);
                                    data/locking.py makes it die with its process

A picture's row is computed again only when its size or modification time changed: as the folder's
kept listing (listing.py) gives them, else from a stat of each (of each shard for pictures in one). A
lookup of the pictures an index holds, in its order, finds them with one search of its key blob
(row_index.py): a million pictures' warm lookup is about a second. The index is
the commit point: it is replaced atomically after the new rows are on disk, so rows a killed writer
left beyond it are ignored (and cut off by the next writer); a row file shorter than its index says,
or an index of another format, is detected and the entry rebuilt, never read as pixels. Readers map
the file read-only (copy-on-write), so training reads batches from it and resident memory does not
grow with the number of pictures: the page cache holds what fits.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import UserError
from .archives import SEP, signature
from .cache_folder import evict
from .locking import entry_lock
from .row_index import MISSING, Keys, RowIndex, index_file

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


def available_memory() -> int:
    """Bytes this process may still fill: the smaller of the machine's available memory and what its
    memory cgroup (v1 or v2) leaves (page cache counts towards a cgroup's limit)."""
    free = 2**62
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, group = line.split(":", 2)
            folder = (Path("/sys/fs/cgroup/memory") / group.lstrip("/") if "memory" in controllers.split(",")
                      else Path("/sys/fs/cgroup") / group.lstrip("/") if controllers == "" else None)
            for limit_name in ("memory.limit_in_bytes", "memory.max"):  # cgroup v1, v2
                if folder is not None and (folder / limit_name).is_file():
                    limit = (folder / limit_name).read_text().strip()
                    if limit != "max" and int(limit) < 2**60:
                        free = min(free, int(limit))  # the whole limit: its page cache is reclaimed for us
    except (OSError, ValueError):
        pass
    return free


def signatures_of(keys: list[str]) -> np.ndarray:
    """(size, mtime_ns) of each file, or of the shard holding a picture inside one (archives.py: one stat
    per shard); MISSING where it cannot be stat'ed."""
    shards: dict[str, list[int] | None] = {}
    found: list = []
    for key in keys:
        if SEP in key:
            container = key.partition(SEP)[0]
            if container not in shards:
                shards[container] = signature(container)
            found.append(shards[container] or (MISSING, MISSING))
            continue
        try:
            stat = os.stat(key)
            found.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            found.append((MISSING, MISSING))
    return np.asarray(found, dtype=np.int64).reshape(-1, 2)


# compute(positions) → (offset into positions, rows array, reasons) per chunk, in order; a reason is
# None where the row was computed, else why the picture has none (it does not decode, say).
Compute = Callable[[list[int]], Iterable[tuple[int, np.ndarray, list]]]


class RowStore:
    """One cache entry: one fixed-size row per picture for one setting (decoded pixels, a frozen
    backbone's features, `check`'s findings), appended to a memory-mapped file, keyed by the picture's
    path, size and modification time."""

    def __init__(self, root: Path, name: str, settings: dict, row_shape: tuple[int, ...], dtype,
                 max_gb: float = DEFAULT_MAX_GB):
        self.root, self.max_gb = root, max_gb  # the whole cache is kept within max_gb after this entry grows
        self.settings = settings  # with its "format": an index of another format or setting is rebuilt
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = root / f"{name}-{key}"
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    # -- the index ------------------------------------------------------------------------------
    def _read_index(self) -> RowIndex:
        """The committed index, or an empty one when the entry is missing, foreign or damaged."""
        empty = RowIndex(self.settings)
        try:
            index = RowIndex.read(self.dir)
            if index is None:
                return empty
            consistent = all(index.settings.get(k) == v for k, v in self.settings.items())
            pixels = self.dir / PIXELS
            size = pixels.stat().st_size if pixels.is_file() else 0
            if consistent and size >= index.rows * self.row_bytes:
                return index
            reason = "of another imgcls version or setting" if not consistent else "with a truncated pixel file"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            reason = "with an unreadable index"
        log.warning("cache: %s is %s; rebuilding it", self.dir, reason)
        return empty

    # -- use -------------------------------------------------------------------------------------
    def lookup_rows(self, paths: list[str], compute: Compute, desc: str,
                    signatures: np.ndarray | None = None) -> tuple[np.ndarray, list[dict[str, str]]]:
        """Rows for `paths` (-1 where a picture has none) and the skipped ones with their reasons,
        computing rows only for the pictures that are new or changed since they were cached.
        `signatures`: each picture's (size, mtime_ns) as its listing found them (listing.py), else each
        picture is stat'ed here."""
        keys = Keys(paths)
        signatures = signatures_of(paths) if signatures is None else signatures  # a stat reads a relative path too
        # A reader holds the lock shared while it reads the index and maps the file, so that an eviction
        # (which takes it exclusively, without waiting) never deletes an entry being opened.
        with entry_lock(self.dir, shared=True):
            index = self._read_index()
            positions = index.positions(keys)
            stale = index.stale(positions, signatures)
            if not len(stale):
                self._mapped = self._map(index.rows)
        if len(stale):
            waited = time.perf_counter()
            # Other processes (tune trials, torchrun ranks, a second command) wait here.
            with entry_lock(self.dir, doing=f"{desc} {len(stale):,} pictures"):
                index = self._read_index()  # another process may have computed them while we waited
                positions = index.positions(keys)
                stale = index.stale(positions, signatures)
                if len(stale):
                    positions[stale] = self._append(index, [keys[i] for i in stale], positions[stale],
                                                    signatures[stale], compute, stale.tolist(), desc)
                else:
                    log.info("cache: another process %s these %d pictures while this one waited %.1f s for %s",
                             DONE.get(desc, desc), len(paths), time.perf_counter() - waited, self.dir)
                self._mapped = self._map(index.rows)
            evict(self.root, self.max_gb, keep=self.dir)
        else:
            log.info("cache: all %d pictures already %s in %s", len(paths), DONE.get(desc, "cached"), self.dir)
        os.utime(index_file(self.dir))  # last use, for least-recently-used eviction
        rows = index.row_of[positions]
        skipped = [{"path": paths[i], "reason": index.reasons.get(keys[i])} for i in np.flatnonzero(rows < 0)]
        return rows, skipped

    def _append(self, index: RowIndex, keys: list[str], at: np.ndarray, signatures: np.ndarray, compute: Compute,
                positions: list[int], desc: str) -> np.ndarray:
        """Compute the rows of `keys` (at `at` in the index, -1 where new), append them to the file, then
        commit `index` with them; returns the keys' places in it."""
        start_time = time.perf_counter()
        rows = committed = index.rows
        row_of = np.full(len(keys), -1, dtype=np.int64)
        reasons: list[str | None] = [None] * len(keys)
        with open(self.dir / PIXELS, "a+b") as f:
            f.truncate(rows * self.row_bytes)  # rows a killed writer left beyond the index
            drop = (rows + len(keys)) * self.row_bytes > available_memory() // 2
            try:
                unsynced = 0
                for start, array, chunk_reasons in compute(positions):
                    good = [j for j, r in enumerate(chunk_reasons) if r is None]
                    f.write(np.ascontiguousarray(array[good], dtype=self.dtype).tobytes())
                    unsynced += len(good) * self.row_bytes
                    if unsynced >= SYNC_BYTES:
                        _written_out(f, drop)
                        unsynced = 0
                    for j, reason in enumerate(chunk_reasons):
                        if reason is None:
                            row_of[start + j], rows = rows, rows + 1
                        else:
                            reasons[start + j] = reason
                            log.warning("skipped %s: %s", keys[start + j], reason)
                _written_out(f, drop)
            except OSError as error:
                f.truncate(committed * self.row_bytes)  # no partial entry
                if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    needed = len(keys) * self.row_bytes / 2**20
                    raise UserError(f"Received: a full disk while caching {desc} results in {self.dir} "
                                    f"({needed:,.0f} MB needed); expected free space there, or --cache-dir "
                                    "elsewhere, or --no-cache") from None
                raise
        placed = index.update(keys, at, signatures, row_of, reasons)
        index.rows = rows
        index.write(self.dir)
        log.info("cache: %s %d new or changed pictures in %.1f s into %s", DONE.get(desc, desc), len(keys),
                 time.perf_counter() - start_time, self.dir)
        return placed

    def _map(self, rows: int) -> np.ndarray:
        if rows == 0:
            return np.zeros((0, *self.row_shape), dtype=self.dtype)
        # Copy-on-write: reads come from the page cache and nothing is loaded; a stray write never
        # reaches the file.
        return np.memmap(self.dir / PIXELS, dtype=self.dtype, mode="c", shape=(rows, *self.row_shape))

    def array(self) -> np.ndarray:
        """Every row of the last lookup (or of the committed index), memory-mapped."""
        mapped = getattr(self, "_mapped", None)
        return self._map(self._read_index().rows) if mapped is None else mapped


SYNC_BYTES = 64 * 2**20


def _written_out(f, drop: bool) -> None:
    """Flush what was appended to the disk and, with `drop` (a file larger than the memory there is),
    drop it from the page cache: dirty pages cannot be reclaimed until written, so a writer under a
    memory limit smaller than the file (a cgroup's) would otherwise be killed while filling it.
    Readers fault the pages back in as they need them."""
    f.flush()
    os.fsync(f.fileno())
    if drop and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


PIXELS = "pixels.u8"  # the rows' file (named for the first kind of entry, decoded pixels)
# What a lookup's log says was done, by its description.
DONE = {"decoding": "decoded", "frozen features": "computed", "checking": "checked"}


class DecodedStore(RowStore):
    """Every picture ever decoded with one setting, a (C, H, W) uint8 row each."""

    def __init__(self, root: Path, channels: int, size: int, trim: bool, resize: str = "squash",
                 max_gb: float = DEFAULT_MAX_GB, crop: float = 1.0):
        settings = {"format": FORMAT, "channels": channels, "size": size, "trim": trim, "resize": resize,
                    **({"crop": crop} if crop != 1.0 else {})}  # entries made before crop fractions keep their key
        super().__init__(root, f"decoded-{channels}x{size}{'-trim' if trim else ''}"
                         f"{'' if resize == 'squash' else '-' + resize}{'' if crop == 1.0 else f'{crop:g}'}", settings,
                         (channels, size, size), np.uint8, max_gb)

    def lookup(self, paths: list[str], desc: str = "decoding",
               signatures: np.ndarray | None = None) -> tuple[np.ndarray, list[dict[str, str]]]:
        """Rows for `paths`, decoding only the pictures that are new or changed since they were cached."""
        from .decode import decode_chunks

        channels, size = self.row_shape[0], self.row_shape[1]

        def decode(positions: list[int]):
            return decode_chunks([paths[i] for i in positions], channels, size, desc, trim=self.settings["trim"],
                                 resize=self.settings["resize"], crop=self.settings.get("crop", 1.0))
        return self.lookup_rows(paths, decode, "decoding", signatures)


@dataclass
class PictureRows:
    """Decoded pictures as rows of one array (the cache's memory map, or an in-memory array): slicing
    reads only the rows asked for, so a set larger than memory is predicted batch by batch."""

    array: np.ndarray
    rows: np.ndarray  # the row of each picture, in order

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions) -> np.ndarray:
        return self.array[self.rows[positions]]


def decode_rows(paths: list[str], channels: int, size: int, desc: str = "decoding", trim: bool = False,
                cache: CacheSettings | None = None, resize: str = "squash",
                signatures: np.ndarray | None = None, crop: float = 1.0) -> tuple[PictureRows, np.ndarray, list[dict]]:
    """Decode `paths` at (channels, size), with numpy alone: through the persistent decoded cache (only
    new or changed pictures are decoded; every process and rank maps the same file), or with
    cache.enabled=False in this process's memory. Returns the pictures that decoded, their indices into
    `paths`, and the skipped ones with their reasons. `signatures`: the pictures' (size, mtime_ns) as
    their listing found them (listing.py); else the cache stats each. `crop`: decode.decode_image's."""
    from .decode import decode_all

    cache = cache or CacheSettings()
    if cache.enabled:
        store = DecodedStore(cache.root, channels, size, trim, resize, max_gb=cache.max_gb, crop=crop)
        rows, skipped = store.lookup(paths, desc, signatures)
        ok = np.flatnonzero(rows >= 0)
        return PictureRows(store.array(), rows[ok]), ok, skipped
    start = time.perf_counter()
    array, ok, skipped = decode_all(paths, channels, size, desc, trim=trim, resize=resize, crop=crop)
    log.info("decoded %d pictures in %.1f s into this process's memory (--no-cache)", len(paths),
             time.perf_counter() - start)
    return PictureRows(array, np.arange(len(ok))), ok, skipped
