"""The pictures under a folder, listed once and kept between commands (git's untracked cache, for
pictures).

A million pictures are a million directory entries and a stat each (about 3 µs a stat here: 3 s
before a picture is read). So a tree's listing (its pictures with their size and modification time,
and every folder read with the folder's own modification time) is kept in the cache folder, and a
later command stats the folders alone: when none changed (adding, removing or renaming a picture
changes its folder's time) it takes the pictures and their signatures from the kept listing, and the
decoded cache (store.py) compares those signatures with its index instead of stat'ing each picture.

A folder's time does not move when a picture in it is rewritten in place. So a random sample of the
kept pictures (up to SAMPLE) is stat'ed again on every use, and any difference lists the tree again;
a single picture rewritten in place in an unchanged folder can go unnoticed until then (`imgcls cache
clear` forgets every listing). A listing that read a folder changed within RACY_NS of its start is not
kept, since a change within the same tick of the file system's clock would not move that folder's time
(git's "racy" rule).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
FORMAT = "imgcls-listing/1"
SAMPLE = 2000  # pictures stat'ed again on each use of a kept listing (6 ms)
RACY_NS = 2 * 10**9  # FAT's 2 s granularity; ext4 and XFS tick every few milliseconds


def is_clutter(name: str) -> bool:
    # Hidden files and folders (.DS_Store, .ipynb_checkpoints), OS thumbnails, and non-picture files.
    return name.startswith(".") or name.lower() in ("thumbs.db", "desktop.ini")


@dataclass
class Listing:
    """Pictures under a root: `paths` as os.walk joins them under the root, each one's (size, mtime_ns)
    when listed in `signatures`, and (for class folders) each one's class folder as an index into
    `groups`; broken links and folders reached twice are in `skipped`."""

    paths: list[str]
    signatures: np.ndarray  # (N, 2) int64
    groups: np.ndarray  # (N,) int64
    group_names: list[str]
    skipped: list[dict[str, str]]


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


class _Walk:
    """One listing from the disk: links to folders are followed (users link data in), but each real
    folder is read once; a link back to a folder already read (a cycle such as `a/loop -> ..`, or a
    second route to it) is skipped rather than read again under another label."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes: list[int] = []
        self.mtimes: list[int] = []
        self.groups: list[int] = []
        self.group_names: list[str] = []
        self.folders: list[tuple[str, int]] = []  # every folder read, with its mtime_ns
        self.skipped: list[dict[str, str]] = []
        self.visited: set[tuple[int, int]] = set()

    def tree(self, root: str, group: int = 0) -> None:
        """Every picture under `root` (recursive), clutter ignored."""
        stat = _stat(root)
        if stat is None or (stat.st_dev, stat.st_ino) in self.visited:
            return
        self.visited.add((stat.st_dev, stat.st_ino))
        self.folders.append((root, stat.st_mtime_ns))
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            kept = []
            for d in sorted(dirnames):
                if is_clutter(d):
                    continue
                folder = os.path.join(dirpath, d)
                stat = _stat(folder)
                if stat is None:
                    continue
                if (stat.st_dev, stat.st_ino) in self.visited:
                    self.skipped.append({"path": folder, "reason": f"a link to a folder already read "
                                         f"({os.path.realpath(folder)}): a cycle or a second route; not read again"})
                    continue
                self.visited.add((stat.st_dev, stat.st_ino))
                self.folders.append((folder, stat.st_mtime_ns))
                kept.append(d)
            dirnames[:] = kept
            for name in sorted(filenames):
                if is_clutter(name) or not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, name)
                stat = _stat(path)
                if stat is None:
                    self.skipped.append({"path": path, "reason": "broken link"})
                    continue
                self.paths.append(path)
                self.sizes.append(stat.st_size)
                self.mtimes.append(stat.st_mtime_ns)
                self.groups.append(group)

    def classes(self, root: str) -> None:
        """Class folders: every picture under each sub-folder of `root`, grouped by that sub-folder. The
        root and every class folder count as read from the start: a link inside one class to the root or
        to another class would otherwise file that class's pictures under this one."""
        stat = _stat(root)
        self.folders.append((root, stat.st_mtime_ns if stat else -1))
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if not is_clutter(e.name) and e.is_dir())
        ids = [(s.st_dev, s.st_ino) if s else None for s in (_stat(os.path.join(root, n)) for n in names)]
        self.visited = {i for i in [(stat.st_dev, stat.st_ino) if stat else None, *ids] if i is not None}
        read = set()
        for name, folder_id in zip(names, ids):
            folder = os.path.join(root, name)
            if folder_id in read:
                self.skipped.append({"path": folder, "reason": f"the same folder as a class already read "
                                     f"({os.path.realpath(folder)}); not read again"})
                continue
            read.add(folder_id)
            self.visited.discard(folder_id)
            self.group_names.append(name)
            self.tree(folder, len(self.group_names) - 1)

    def listing(self) -> Listing:
        signatures = np.empty((len(self.paths), 2), dtype=np.int64)
        signatures[:, 0], signatures[:, 1] = self.sizes, self.mtimes
        return Listing(self.paths, signatures, np.asarray(self.groups, dtype=np.int64), self.group_names,
                       self.skipped)


def list_tree(root: str | Path, by_class: bool = False) -> Listing:
    """The pictures under `root` (with `by_class`, grouped by its sub-folders), from the kept listing when
    no folder of the tree changed since it was made, else from the disk (and kept for next time)."""
    from .store import cache_root

    root = str(Path(root))  # "./data/" and "data" list the same paths, as Path spelled them before
    key = hashlib.sha1(json.dumps([FORMAT, os.path.realpath(root), by_class]).encode()).hexdigest()[:20]
    kept = cache_root() / "listings" / f"{key}.npz"
    started = time.perf_counter()
    listing = _load(kept, root)
    if listing is not None:
        log.info("listed %d pictures under %s in %.2f s (kept listing; no folder changed)", len(listing.paths),
                 root, time.perf_counter() - started)
        return listing
    start_ns = time.time_ns()
    walk = _Walk()
    walk.classes(root) if by_class else walk.tree(root)
    listing = walk.listing()
    if all(mtime < start_ns - RACY_NS for _, mtime in walk.folders):
        _save(kept, root, walk, listing)
    log.info("listed %d pictures in %d folders under %s in %.2f s", len(listing.paths), len(walk.folders), root,
             time.perf_counter() - started)
    return listing


def _relative(paths: list[str], root: str) -> bytes:
    prefix = len(os.path.join(root, ""))  # each entry ends in NUL (no path holds one): "" is the root itself
    return "".join((p[prefix:] if p != root else "") + "\0" for p in paths).encode("utf-8", "surrogateescape")


def _joined(blob: np.ndarray, root: str) -> list[str]:
    prefix = os.path.join(root, "")
    return [prefix + p if p else root for p in blob.tobytes().decode("utf-8", "surrogateescape").split("\0")[:-1]]


def _save(kept: Path, root: str, walk: _Walk, listing: Listing) -> None:
    meta = {"format": FORMAT, "group_names": listing.group_names, "skipped": listing.skipped}
    _write(kept, {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                  "paths": np.frombuffer(_relative(listing.paths, root), dtype=np.uint8),
                  "signatures": listing.signatures, "groups": listing.groups.astype(np.int32),
                  "folders": np.frombuffer(_relative([f for f, _ in walk.folders], root), dtype=np.uint8),
                  "folder_mtimes": np.asarray([m for _, m in walk.folders], dtype=np.int64)})


def _load(kept: Path, root: str) -> Listing | None:
    """The kept listing when every folder it read still has its mtime and a sample of its pictures
    still has its signature; else None."""
    try:
        with np.load(kept, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            if meta.get("format") != FORMAT:
                return None
            folders, folder_mtimes = _joined(z["folders"], root), z["folder_mtimes"]
            if len(folders) != len(folder_mtimes):
                return None
            for folder, mtime in zip(folders, folder_mtimes.tolist()):
                stat = _stat(folder)
                if stat is None or stat.st_mtime_ns != mtime:
                    return None
            paths, signatures, groups = _joined(z["paths"], root), z["signatures"], z["groups"].astype(np.int64)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
        return None
    if len(paths) != len(signatures) or len(paths) != len(groups):
        return None
    sample = random.Random().sample(range(len(paths)), min(len(paths), SAMPLE))  # not the user's global state
    for i in sample:
        stat = _stat(paths[i])
        if stat is None or (stat.st_size, stat.st_mtime_ns) != tuple(signatures[i].tolist()):
            log.info("listing: %s changed in place since the tree was listed; listing it again", paths[i])
            return None
    return Listing(paths, signatures, groups, meta["group_names"], meta["skipped"])


# ------------------------------------------------------------------------------ WebDataset shards
SHARDS_FORMAT = "imgcls-shard-samples/1"


def list_shard_samples(files: list[str], label_key: str = "label") -> Listing:
    """The pictures of WebDataset shards and their labels (archives.list_tar_samples), kept in the cache
    folder with each shard's size and mtime, so that a later command stats each shard once and reads one
    file instead of walking every shard's members. `groups`: each picture's label as an index into
    `group_names`, -1 for a picture with no label; `signatures`: its shard's."""
    from .archives import SEP, list_tar_samples, signature
    from .row_index import MISSING
    from .store import cache_root

    signatures = [signature(f) or [MISSING, MISSING] for f in files]
    key = hashlib.sha1(json.dumps([SHARDS_FORMAT, [os.path.abspath(f) for f in files], label_key]).encode())
    kept = cache_root() / "listings" / f"shards-{key.hexdigest()[:20]}.npz"
    start_ns, started = time.time_ns(), time.perf_counter()
    try:
        with np.load(kept, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            if meta.get("format") == SHARDS_FORMAT and meta.get("signatures") == signatures:
                members = z["members"].tobytes().decode("utf-8", "surrogateescape").split("\0")[:-1]
                shard_of, groups = z["shard_of"].astype(np.int64), z["groups"].astype(np.int64)
                prefixes = [f + SEP for f in files]
                paths = [prefixes[s] + m for s, m in zip(shard_of.tolist(), members)]
                log.info("listed %d pictures in %d shards in %.2f s (kept listing; no shard changed)", len(paths),
                         len(files), time.perf_counter() - started)
                return Listing(paths, np.asarray(signatures, np.int64)[shard_of], groups, meta["group_names"],
                               meta["skipped"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
        pass
    pairs, skipped, shard_of = list_tar_samples(files, label_key)
    names = sorted({label for _, label in pairs if label is not None})
    code = {name: k for k, name in enumerate(names)}
    groups = np.asarray([code[label] if label is not None else -1 for _, label in pairs], dtype=np.int64)
    shards = np.asarray(shard_of, dtype=np.int64)
    paths = [p for p, _ in pairs]
    listing = Listing(paths, np.asarray(signatures, np.int64).reshape(-1, 2)[shards], groups, names, skipped)
    if all(size != MISSING and mtime < start_ns - RACY_NS for size, mtime in signatures):
        prefix_lengths = [len(f + SEP) for f in files]
        members = "".join(p[prefix_lengths[s]:] + "\0" for p, s in zip(paths, shard_of))
        meta = {"format": SHARDS_FORMAT, "signatures": signatures, "group_names": names, "skipped": skipped}
        _write(kept, {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
                      "members": np.frombuffer(members.encode("utf-8", "surrogateescape"), np.uint8),
                      "shard_of": shards.astype(np.int32), "groups": groups.astype(np.int32)})
    log.info("listed %d pictures in %d shards in %.2f s", len(paths), len(files), time.perf_counter() - started)
    return listing


def _write(kept: Path, arrays: dict) -> None:
    """Write a kept listing atomically (a reader sees the old file or the new one); a read-only cache
    folder just keeps nothing."""
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, kept)
    except OSError as error:
        log.debug("listing %s not kept (%s)", kept, error)
