"""The cache folder as a whole (store.py holds one entry): its entries listed, cleared and evicted least
recently used first, and the kept listings (listing.py, archives.py) cleared, for `imgcls cache`."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from .locking import entry_lock
from .row_index import RowIndex, index_file

log = logging.getLogger(__name__)

KINDS = ("decoded-", "features-", "checked-")  # the entry folders' name prefixes


def list_entries(root: Path, count: bool = True) -> list[dict]:
    """Every entry: name, pictures (when `count`: it reads the index), bytes on disk, seconds since last use."""
    entries = []
    folders = sorted(f for f in root.iterdir() if f.is_dir() and f.name.startswith(KINDS)) if root.is_dir() else []
    for folder in folders:
        try:
            index = RowIndex.read(folder) if count else None
            pictures = len(index) if index is not None else 0 if count else None
            used = index_file(folder).stat().st_mtime
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        except (OSError, ValueError, KeyError, TypeError):
            try:
                pictures, used, size = 0, folder.stat().st_mtime, 0
            except OSError:  # deleted meanwhile by another process's eviction
                continue
        entries.append({"name": folder.name, "path": str(folder), "pictures": pictures, "bytes": size,
                        "age_s": time.time() - used})
    return entries


def _remove(entry: dict) -> bool:
    """Delete an entry unless a process is reading or writing it right now (then keep it: no waiting)."""
    with entry_lock(Path(entry["path"]), blocking=False) as held:
        if held:
            shutil.rmtree(entry["path"], ignore_errors=True)
    if not held:
        log.info("cache: %s is in use by another process; kept", entry["name"])
    return held


def clear(root: Path, older_than_days: float | None = None, keep: Path | None = None) -> list[dict]:
    """Delete the entries unused for longer than `older_than_days` (all when None); returns them."""
    removed = []
    for entry in list_entries(root):
        if Path(entry["path"]) == keep or (older_than_days is not None and entry["age_s"] < older_than_days * 86400):
            continue
        if _remove(entry):
            removed.append(entry)
    return removed


LISTINGS = ("listings", "shards")  # kept listings of folders (listing.py) and of tar shards (archives.py)


def clear_listings(root: Path, older_than_days: float | None = None) -> int:
    """Delete the kept listings older than `older_than_days` (all when None); returns how many. A deleted
    listing is simply made again from the disk."""
    removed = 0
    for kept in (f for folder in LISTINGS for f in (root / folder).glob("*") if f.is_file()):
        try:
            if older_than_days is None or time.time() - kept.stat().st_mtime >= older_than_days * 86400:
                kept.unlink()
                removed += 1
        except OSError:  # deleted meanwhile by another process
            pass
    return removed


def evict(root: Path, max_gb: float, keep: Path) -> None:
    """Delete least recently used entries until the cache is within `max_gb` (never `keep`, nor one in use)."""
    entries = sorted(list_entries(root, count=False), key=lambda e: -e["age_s"])  # oldest use first
    total = sum(e["bytes"] for e in entries)
    for entry in entries:
        if total <= max_gb * 2**30:
            break
        if Path(entry["path"]) != keep and _remove(entry):
            total -= entry["bytes"]
            log.info("cache: evicted %s (%.0f MB, over the %.0f GB cap)", entry["name"],
                     entry["bytes"] / 2**20, max_gb)
