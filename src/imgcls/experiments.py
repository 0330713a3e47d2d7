"""`imgcls runs`: the finished runs under a folder, as a table (model, data, best epoch, validation
accuracy and log loss, training time), and their validation curves overlaid. Reads only the JSON and
CSV files every run folder has; no torch."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from .artifact.card import read_card
from .artifact.files import CARD, METRICS
from .errors import UserError
from .tasks import get_task

SORTS = {"accuracy": ("val_accuracy", True), "log_loss": ("val_log_loss", False), "time": ("train_seconds", False),
         "date": ("finished", True), "name": ("run", False)}
SKIP = {"tensorboard", "mlruns", ".git"}


def list_runs(root: str | Path, sort: str = "accuracy") -> list[dict]:
    """Every folder under `root` holding model.json and metrics.json (finetune stages included)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"Received: {root}; expected a folder of runs (default: runs)")
    if sort not in SORTS:
        raise UserError(f"Received: --sort {sort}; expected one of {', '.join(SORTS)}")
    rows = []
    for metrics_path in sorted(root.rglob(METRICS)):
        folder = metrics_path.parent
        if SKIP & set(folder.relative_to(root).parts) or not (folder / CARD).is_file():
            continue
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            card = read_card(folder)
            val = metrics["validation"]
        except (OSError, ValueError, KeyError, UserError):
            continue  # a folder being written, or not one of ours
        source = str(card.config.get("data", {}).get("source", ""))
        rows.append({"run": str(folder.relative_to(root)) if folder != root else folder.name, "path": str(folder),
                     "model": card.architecture, "data": Path(source).name or source,
                     "best_epoch": metrics.get("best_epoch"), "epochs": metrics.get("epochs_run"),
                     # the task's headline: accuracy, or micro-F1 for several labels per picture
                     "val_accuracy": get_task(card.task).headline(val)[1], "val_log_loss": val.get("log_loss"),
                     "train_seconds": metrics.get("train_seconds"), "finished": metrics_path.stat().st_mtime})
    key, descending = SORTS[sort]
    return sorted(rows, key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0), reverse=descending)


def format_runs(rows: list[dict]) -> str:
    header = f"{'run':32} {'model':20} {'data':16} {'best':>9} {'acc/F1':>8} {'log loss':>9} {'time':>8}  finished"
    lines = [header]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["finished"]))
        lines.append(f"{r['run'][:32]:32} {r['model'][:20]:20} {r['data'][:16]:16} "
                     f"{r['best_epoch']:>4}/{r['epochs']:<4} {r['val_accuracy']:>8.4f} {r['val_log_loss']:>9.4f} "
                     f"{r['train_seconds']:>7.0f}s  {when}")
    return "\n".join(lines)


def read_history(folder: str | Path) -> list[dict]:
    path = Path(folder) / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_runs(rows: list[dict], out: str | Path) -> Path:
    """out: each run's validation loss and accuracy per epoch, overlaid, side by side."""
    from .report.plots import plot_run_curves, save_figure

    save_figure(plot_run_curves({row["run"]: read_history(row["path"]) for row in rows}), out)
    return Path(out)
