"""The run folder: one RunFolder object owns every file a run writes, and the callbacks that fill it
while training runs.

Other tools read these names; keep them: config.yaml, model.safetensors, model.json, history.csv,
metrics.json, data.json, split.csv, train_predictions.csv, val_predictions.csv, curves.png,
confusion.png, samples.png, val_predictions.png, report.html, resume.pt.
"""
from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .engine.checkpoint import csv_text, save_model, save_resume, write_json, write_text
from .engine.trainer import Callback, Trainer
from .errors import UserError

log = logging.getLogger(__name__)

# seconds: the whole epoch (training and validation); train_seconds: its training steps alone (airbench's
# timing rule leaves validation out; bench/gpu.py)
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "train_seconds"]


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


def prediction_rows(paths: list[str], labels: np.ndarray, probs: np.ndarray, card, sep: str = " "):
    """path, label, predicted, p_given and one probability per class (what `audit RUN_DIR` reads), each
    as the run's task reads its outputs (tasks/)."""
    from .tasks import get_task

    task = get_task(card.task)
    predicted = task.decide(probs, card)
    for p, label, row, decided in zip(paths, labels, probs, predicted):
        yield [p, task.label_text(label, card.classes, sep), task.decided_text(decided, card.classes, sep),
               f"{task.p_given(row, label):.6f}", *[f"{v:.6f}" for v in row]]


class RunFolder:
    """Every file of one run. `writes=False` (a torchrun rank other than the first) makes every write a
    no-op, so the ranks run the same code and only one writes."""

    def __init__(self, path: Path, writes: bool = True):
        self.path, self.writes = Path(path), writes

    @classmethod
    def new(cls, out: str | None, model: str, writes: bool = True) -> "RunFolder":
        """--out (new or empty), else runs/<model>[N]; the other ranks need no folder."""
        return cls(new_run_dir(out, model) if writes else Path(out or "."), writes)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def _text(self, name: str, text: str) -> None:
        if self.writes:
            write_text(self.path / name, text)

    def _json(self, name: str, data) -> None:
        if self.writes:
            write_json(self.path / name, data)

    def write_config(self, config: dict, comment: str | None = None) -> None:
        head = f"# {comment}\n" if comment else ""
        self._text("config.yaml", head + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))

    def write_data(self, info: dict) -> None:
        self._json("data.json", info)

    def write_split(self, rows: list[tuple[str, str, str]]) -> None:
        self._text("split.csv", csv_text(["path", "label", "split"], rows))

    def read_split(self) -> dict[str, str] | None:
        return read_split(self.path / "split.csv") if (self.path / "split.csv").is_file() else None

    def write_history(self, history: list[dict]) -> None:
        # row.get: a run resumed from before train_seconds existed leaves its old epochs' cell empty
        rows = ([row.get(c, "") for c in HISTORY_COLUMNS] for row in history)
        self._text("history.csv", csv_text(HISTORY_COLUMNS, rows))

    def save_best(self, model: torch.nn.Module, card) -> None:
        if self.writes:
            save_model(self.path, model, card)

    def save_resume(self, state: dict) -> None:
        if self.writes:
            save_resume(self.path, state)

    def write_metrics(self, metrics: dict) -> None:
        self._json("metrics.json", metrics)

    def write_predictions(self, name: str, paths: list[str], labels: np.ndarray, probs: np.ndarray,
                          card, sep: str = " ") -> None:
        self._text(name, csv_text(["path", "label", "predicted", "p_given", *[f"p_{c}" for c in card.classes]],
                              prediction_rows(paths, labels, probs, card, sep)))

    def save_figure(self, figure, name: str) -> None:
        from .report.plots import save_figure

        if self.writes:
            save_figure(figure, self.path / name)
        else:
            import matplotlib.pyplot as plt
            plt.close(figure)

    def write_report(self) -> None:
        from .report.html import write_report

        if self.writes:
            write_report(self.path)


def read_split(path: Path) -> dict[str, str]:
    """path → "train" or "val", from a run's split.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row["split"] for row in csv.DictReader(f)}


class RunWriter(Callback):
    """After each epoch: best weights when validation loss improved, then the resume state, then history.

    The history lives inside resume.pt, and history.csv is rewritten from it, so after a crash and
    --resume every epoch appears exactly once.
    """

    def __init__(self, folder: RunFolder, card):
        self.folder = folder
        self.card = card

    def on_epoch_end(self, trainer: Trainer, row: dict, improved: bool) -> None:
        if improved:
            self.folder.save_best(trainer.weights_model, self.card.with_(best_epoch=row["epoch"]))
        self.folder.save_resume(trainer.state_dict())
        self.folder.write_history(trainer.state.history)


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
    if labels.ndim == 2:  # several labels per picture: spread over the label sets
        labels = np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1)
    per_class = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < min(count, len(labels)):
        for members in per_class:
            if members and len(chosen) < count:
                chosen.append(int(members.pop()))
    return np.asarray(chosen, dtype=np.int64)
