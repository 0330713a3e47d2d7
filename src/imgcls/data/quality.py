"""`imgcls check`: scan every picture once and report what could poison training. Nothing is changed.

Per picture: unreadable (with the decoder's reason), tiny (fewer pixels than min_pixels), uniform
borders (with the crop box that removes them), exact duplicates (same pixels) and near duplicates
(perceptual dHash within 4 bits), flagged specially when the copies carry different labels or sit on
both sides of a train/validation split; extreme aspect ratio; greyscale pictures in a colour set.
Per set: class imbalance. Actions are a separate, explicit step (`train --clean`).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .decode import DecodeError, border_box, open_picture
from .sources import Samples
from .store import CacheSettings, RowStore

log = logging.getLogger(__name__)

NEAR_BITS = 4  # dHash bits that may differ between near duplicates (of 64)
NEAR_MEAN_DIFF = 12.0  # and their 16x16 grey thumbnails may differ by at most this much on average (of 255)
ASPECT_LIMIT = 3.0
UNLABELLED = "(unlabelled)"  # the class of a test folder's pictures: never a label conflict
IMBALANCE_LIMIT = 3.0


@dataclass
class PictureInfo:
    path: str
    error: str | None = None
    width: int = 0
    height: int = 0
    grey: bool = False
    box: tuple[int, int, int, int] | None = None
    digest: str = ""
    dhash: int = 0
    thumb: np.ndarray | None = None  # 16x16 grey, to confirm a dHash match (dark pictures collide)


def inspect_picture(path: str) -> PictureInfo:
    """Everything `check` needs from one picture, read once."""
    try:
        img = open_picture(path)
    except DecodeError as error:  # every decoder failure is a finding, not a crash
        return PictureInfo(path, error=str(error))
    rgb = img.convert("RGB")
    small = rgb.copy()
    small.thumbnail((64, 64))
    channels = np.asarray(small, dtype=np.int16)
    grey = img.mode in ("1", "L", "LA", "I", "I;16", "F") or int(np.abs(channels - channels.mean(2, keepdims=True)).max()) <= 4
    luma = rgb.convert("L")
    pixels = np.asarray(luma.resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).ravel()
    return PictureInfo(path, None, rgb.width, rgb.height, grey, border_box(rgb),
                       hashlib.sha1(rgb.tobytes() + repr(rgb.size).encode()).hexdigest(),
                       int(np.packbits(bits).view(">u8")[0]),
                       np.asarray(luma.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32))


# One picture's findings as a fixed-size row of the persistent cache (data/store.py), so a second
# `check` or `train --clean` of the same pictures reads them instead of decoding every picture again.
CHECK_FORMAT = "imgcls-check/1"
CHECK_ROW = np.dtype([("width", "<u4"), ("height", "<u4"), ("grey", "u1"), ("box", "<i4", (4,)),
                      ("digest", "S20"), ("dhash", "<u8"), ("thumb", "u1", (16, 16))])


def _to_rows(infos: list[PictureInfo]) -> np.ndarray:
    rows = np.zeros(len(infos), dtype=CHECK_ROW)
    for row, info in zip(rows, infos):
        if info.error is None:
            row["width"], row["height"], row["grey"] = info.width, info.height, info.grey
            row["box"] = info.box if info.box is not None else (-1, -1, -1, -1)
            row["digest"], row["dhash"] = bytes.fromhex(info.digest), info.dhash
            row["thumb"] = info.thumb
    return rows


def _from_row(path: str, row: np.void) -> PictureInfo:
    box = tuple(int(v) for v in row["box"])
    return PictureInfo(path, None, int(row["width"]), int(row["height"]), bool(row["grey"]),
                       None if box[0] < 0 else box, bytes(row["digest"]).hex(), int(row["dhash"]),
                       np.asarray(row["thumb"], dtype=np.float32))


def inspect_all(paths: list[str], cache: CacheSettings | None = None,
                signatures: np.ndarray | None = None) -> list[PictureInfo]:
    """inspect_picture for every path (threads), through the persistent cache unless it is off: only
    new or changed pictures are read again (`signatures`: as their listing found them, else stat'ed)."""
    from tqdm.auto import tqdm

    workers = min(8, (os.cpu_count() or 1) + 1)

    def inspect_chunks(chosen: list[str]):
        with ThreadPoolExecutor(workers) as pool, tqdm(total=len(chosen), desc="checking", unit="img",
                                                       disable=None, mininterval=2.0, leave=False) as bar:
            for start in range(0, len(chosen), 256):
                infos = list(pool.map(inspect_picture, chosen[start:start + 256]))
                bar.update(len(infos))
                yield start, infos

    if cache is None or not cache.enabled:
        return [info for _, chunk in inspect_chunks(paths) for info in chunk]
    store = RowStore(cache.root, "checked", {"format": CHECK_FORMAT}, (), CHECK_ROW, cache.max_gb)

    def compute(positions: list[int]):
        for start, infos in inspect_chunks([paths[i] for i in positions]):
            yield start, _to_rows(infos), [info.error for info in infos]

    index, skipped = store.lookup_rows(paths, compute, "checking", signatures)
    reasons = {s["path"]: s["reason"] for s in skipped}
    table = store.array()
    return [_from_row(p, table[r]) if r >= 0 else PictureInfo(p, error=reasons[p]) for p, r in zip(paths, index)]


def _near_pairs(hashes: np.ndarray) -> list[tuple[int, int, int]]:
    """(i, j, distance) for hashes within NEAR_BITS bits: candidates share one of 5 bit bands (pigeonhole)."""
    pairs = set()
    for band in range(5):
        shift = band * 12
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(int(h) >> shift) & 0xFFF].append(i)
        for members in buckets.values():
            if 1 < len(members) <= 200:  # a huge bucket is a blank-ish hash, not a duplicate signal
                for a in range(len(members)):
                    for b in range(a + 1, len(members)):
                        pairs.add((members[a], members[b]))
    found = []
    for i, j in pairs:
        distance = bin(int(hashes[i]) ^ int(hashes[j])).count("1")
        if distance <= NEAR_BITS:
            found.append((i, j, distance))
    return sorted(found)


def scan(samples: Samples, *, min_pixels: int = 3600, sides: list[str] | None = None,
         cache: CacheSettings | None = None) -> tuple[list[dict], dict]:
    """Rows of (path, issue, score, detail), and a summary. `sides` names each picture's split (train/val).
    Each picture's findings come from the persistent cache where they are there already."""
    infos = inspect_all(samples.paths, cache, samples.signatures)
    labels = samples.labels
    rows: list[dict] = []

    def add(i: int, issue: str, score: float, detail: str) -> None:
        rows.append({"path": samples.paths[i], "label": samples.classes[labels[i]], "issue": issue,
                     "score": round(float(score), 4), "detail": detail})

    # Files the source already set aside (broken links, CSV ids without a picture, unmatched names).
    rows += [{"path": s["path"], "label": "", "issue": "skipped", "score": 1.0, "detail": s["reason"]}
             for s in samples.skipped]
    readable = [i for i, info in enumerate(infos) if info.error is None]
    colour_share = np.mean([not infos[i].grey for i in readable]) if readable else 0.0
    for i, info in enumerate(infos):
        if info.error is not None:
            add(i, "unreadable", 1.0, info.error)
            continue
        area = info.width * info.height
        if area < min_pixels:
            add(i, "tiny", 1 - area / min_pixels, f"{info.width}x{info.height} px < {min_pixels}")
        if info.box is not None:
            l, t, r, b = info.box
            add(i, "border", 1 - (r - l) * (b - t) / area, f"crop box {l},{t},{r},{b}")
        aspect = max(info.width / info.height, info.height / info.width)
        if aspect > ASPECT_LIMIT:
            add(i, "aspect_ratio", aspect, f"{info.width}x{info.height}")
        if info.grey and colour_share > 0.5:
            add(i, "greyscale", 1.0, "greyscale picture in a colour set")

    groups: dict[str, list[int]] = defaultdict(list)
    for i in readable:
        groups[infos[i].digest].append(i)
    linked = [(members, "exact_duplicate", 0) for members in groups.values() if len(members) > 1]
    hashes = np.array([infos[i].dhash for i in readable], dtype=np.uint64)
    for a, b, distance in _near_pairs(hashes):
        i, j = readable[a], readable[b]
        close = float(np.abs(infos[i].thumb - infos[j].thumb).mean()) <= NEAR_MEAN_DIFF
        if infos[i].digest != infos[j].digest and close:
            linked.append(([i, j], "near_duplicate", distance))
    for members, issue, distance in linked:
        names = {samples.classes[labels[m]] for m in members} - {UNLABELLED}
        for m in members:
            others = [samples.paths[o] for o in members if o != m]
            add(m, issue, 1 - distance / 64, f"same as {others[0]}" + (f" (+{len(others) - 1})" if len(others) > 1 else ""))
            if len(names) > 1:
                add(m, "conflicting_labels", 1.0, f"{issue} labelled {' / '.join(sorted(names))}")
            if sides is not None and len({sides[o] for o in members}) > 1:
                add(m, "split_leak", 1.0, f"{issue} on both sides of the split")

    counts = samples.counts()
    nonzero = [n for n in counts.values() if n]
    imbalance = max(nonzero) / min(nonzero) if nonzero else 1.0
    issue_counts: dict[str, int] = defaultdict(int)
    for row in rows:
        issue_counts[row["issue"]] += 1
    summary = {"pictures": len(samples), "min_pixels": min_pixels, "issues": dict(sorted(issue_counts.items())),
               "pictures_with_issues": len({r["path"] for r in rows}), "class_counts": counts,
               "class_imbalance": round(imbalance, 3), "imbalanced": imbalance > IMBALANCE_LIMIT}
    return rows, summary


DROP_ISSUES = ("unreadable", "tiny", "conflicting_labels")


def paths_to_drop(rows: list[dict]) -> dict[str, str]:
    """The default clean-up: unreadable, tiny and cross-label duplicates (every copy) → path: issue."""
    return {r["path"]: r["issue"] for r in rows if r["issue"] in DROP_ISSUES}
