"""The run folder: its file names, and the callbacks that fill it while training runs.

Other tools read these names; keep them: config.yaml, model.safetensors, model.json, history.csv,
metrics.json, data.json, split.csv, curves.png, confusion.png, samples.png, val_predictions.png,
report.html, resume.pt.
"""
from __future__ import annotations

import csv
import io
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .engine.checkpoint import save_model, save_resume, write_text
from .engine.trainer import Callback, Trainer
from .errors import UserError

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def new_run_dir(out: str | None, model: str) -> Path:
    """--out if given (it must be new or empty: a run never overwrites another), else runs/<model>[N]."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(f"Received: --out {path}, which already holds files; expected a new or empty "
                            f"folder (use --resume {path} to continue that run)")
    else:
        path = next_free(Path("runs") / model)
    path.mkdir(parents=True, exist_ok=True)
    return path


def next_free(base: Path) -> Path:
    """base, or base2, base3, ... : the first that does not exist yet (Ultralytics' runs/exp, exp2)."""
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}{n}")
    return path


def write_config(run_dir: Path, config: dict) -> None:
    write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def write_history(run_dir: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(run_dir / "history.csv", buffer.getvalue())


def write_split(run_dir: Path, rows: list[tuple[str, str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    writer.writerows(rows)
    write_text(run_dir / "split.csv", buffer.getvalue())


def write_predictions_csv(path: Path, paths: list[str], labels: np.ndarray, probs: np.ndarray,
                          classes: list[str]) -> None:
    """path, label, predicted, p_given and one probability column per class (what `audit RUN_DIR` reads)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "predicted", "p_given", *[f"p_{c}" for c in classes]])
    for p, label, row in zip(paths, labels, probs):
        writer.writerow([p, classes[label], classes[int(row.argmax())], f"{row[label]:.6f}",
                         *[f"{v:.6f}" for v in row]])
    write_text(path, buffer.getvalue())


def read_split(path: Path) -> dict[str, str]:
    """path → "train" or "val", from a run's split.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row["split"] for row in csv.DictReader(f)}


class RunWriter(Callback):
    """After each epoch: best weights when validation loss improved, then the resume state, then history.

    The history lives inside resume.pt, and history.csv is rewritten from it, so after a crash and
    --resume every epoch appears exactly once.
    """

    def __init__(self, run_dir: Path, meta: dict):
        self.run_dir = run_dir
        self.meta = meta

    def on_epoch_end(self, trainer: Trainer, row: dict, improved: bool) -> None:
        if improved:
            save_model(self.run_dir, trainer.model, {**self.meta, "best_epoch": row["epoch"]})
        save_resume(self.run_dir, trainer.state_dict())
        write_history(self.run_dir, trainer.state.history)


class ProgressLog(Callback):
    """One log line per epoch (readable in a CI log); a batch progress bar only on a terminal, and
    elsewhere a line every `every` seconds so a long epoch does not look like a hang."""

    def __init__(self, steps_per_epoch: int, every: float = 60.0):
        self.steps = steps_per_epoch
        self.bar = None
        self.interactive = sys.stderr.isatty()
        self.every = every
        self.last = time.monotonic()

    def on_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        if not self.interactive:
            if time.monotonic() - self.last >= self.every:
                self.last = time.monotonic()
                log.info("epoch %d/%d  batch %d/%d  loss %.4f", trainer.state.epoch + 1, trainer.epochs,
                         batch + 1, self.steps, loss.item())
            return
        if self.bar is None:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.steps, desc=f"epoch {trainer.state.epoch + 1}/{trainer.epochs}",
                            unit="batch", leave=False)
        self.bar.update(1)
        if batch % 20 == 0:
            self.bar.set_postfix(loss=f"{loss.item():.4f}")

    def on_epoch_end(self, trainer: Trainer, row: dict, improved: bool) -> None:
        self.last = time.monotonic()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2g  %.1fs%s",
                 row["epoch"], trainer.epochs, row["train_loss"], row["train_acc"], row["val_loss"],
                 row["val_acc"], row["lr"], row["seconds"], "  *best" if improved else "")


def pick_examples(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Up to `count` indices spread over the classes (round-robin), for the picture grids."""
    rng = np.random.default_rng(seed)
    per_class = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < min(count, len(labels)):
        for members in per_class:
            if members and len(chosen) < count:
                chosen.append(int(members.pop()))
    return np.asarray(chosen, dtype=np.int64)
