"""`imgcls check` as a library call: scan a data source and write quality.csv, .json and .html."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .config import DataConfig
from .data.decode import decode_all
from .data.quality import UNLABELLED, scan
from .data.builtin import resolve_source
from .data.sources import Samples, list_pictures, load_samples
from .data.split_folders import find_split_folders
from .data.store import CacheSettings
from .engine.checkpoint import write_csv, write_json
from .errors import UserError
from .report.page import write_page

log = logging.getLogger(__name__)


def check(data: DataConfig, *, min_pixels: int = 3600, out: str | Path = "runs/check",
          cache: CacheSettings | None = None) -> tuple[list[dict], dict]:
    """Scan DATA (and data.val, if given, as the other side of the split; a root of train/, val/, test/
    folders as its splits); write the three reports. Findings are kept in the persistent cache: a second
    check of the same pictures reads them."""
    found = None if data.val or data.labels or data.label_pattern else find_split_folders(resolve_source(data.source))
    if found is not None:
        parts = [(name, str(folder)) for name, folder in (("train", found.train), ("val", found.val),
                                                          ("test", found.test)) if folder is not None]
        log.info("%s holds split folders: checking %s, and duplicates across them", data.source,
                 ", ".join(folder for _, folder in parts))
    else:
        parts = [("train", data.source)] + ([("val", data.val)] if data.val else [])
    loaded = [_load_any(source, data, test_set=i > 0) for i, (_, source) in enumerate(parts)]
    samples, sides = loaded[0], None
    if len(loaded) > 1:
        sides = [name for (name, _), part in zip(parts, loaded) for _ in part.paths]
        # One label space for every side, matched by class name.
        classes = sorted(set().union(*(part.classes for part in loaded)))
        remap = lambda s: np.array([classes.index(s.classes[l]) for l in s.labels], dtype=np.int64)  # noqa: E731
        samples = Samples([p for part in loaded for p in part.paths],
                          np.concatenate([remap(part) for part in loaded]), classes,
                          [item for part in loaded for item in part.skipped])
    rows, summary = scan(samples, min_pixels=min_pixels, sides=sides, cache=cache)
    # What the listing itself left out: an id with two labels, a link cycle, an id without a picture.
    summary["not_listed"] = samples.skipped
    for item in samples.skipped:
        log.warning("not listed: %s: %s", item["path"], item["reason"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["path", "label", "issue", "score", "detail"]
    write_csv(out / "quality.csv", columns, ([r[c] for c in columns]
                                             for r in sorted(rows, key=lambda r: (r["issue"], -r["score"], r["path"]))))
    write_json(out / "quality.json", summary)
    write_page(out / "quality.html", "imgcls check", _sections(rows, summary))
    log.info("%d of %d pictures have issues: %s → %s", summary["pictures_with_issues"], summary["pictures"],
             summary["issues"], out)
    return rows, summary


def _load_any(source: str, data: DataConfig, test_set: bool = False) -> Samples:
    """Labelled pictures as train reads them, or, for a folder of loose pictures (a test set), unlabelled."""
    try:
        # clean: an id with two labels is a finding to list here, not a reason to stop
        return load_samples(source, data.labels, data.id_col, data.label_col, data.ext, data.label_pattern,
                            clean=True, image_col=data.image_col, label_key=data.label_key)
    except UserError:
        if not Path(source).is_dir() or not test_set and (data.labels or data.label_pattern):
            raise
        paths, skipped = list_pictures(source, data.image_col)
        return Samples(paths, np.zeros(len(paths), dtype=np.int64), [UNLABELLED], skipped)


def _sections(rows: list[dict], summary: dict, per_issue: int = 16) -> list:
    """quality.html: the counts, then a contact sheet of the worst pictures per issue."""
    from .report.page import Section
    from .report.plots import figure_png, plot_grid

    sections = [Section(paragraphs=[f"{summary['pictures']} pictures, {summary['pictures_with_issues']} with issues. "
                                    f"Class imbalance (largest/smallest): {summary['class_imbalance']}."],
                        items=[f"{k}: {v}" for k, v in summary["issues"].items()])]
    for issue in summary["issues"]:
        worst = sorted((r for r in rows if r["issue"] == issue), key=lambda r: -r["score"])[:per_issue]
        png = None
        if issue != "unreadable":
            array, index, _ = decode_all([r["path"] for r in worst], 3, 96, "contact sheet")
            if len(index):
                png = figure_png(plot_grid(array, [Path(worst[i]["path"]).name[:24] for i in index]))
        sections.append(Section(issue, png=png, header=["file", "detail"], rows=[[r["path"], r["detail"]] for r in worst]))
    return sections
