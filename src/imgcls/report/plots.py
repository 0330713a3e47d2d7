"""Plots of a run; each function returns a matplotlib Figure (no pyplot, so no GUI backend is needed)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..engine.checkpoint import atomic_write
from .fonts import font_families


@contextlib.contextmanager
def _style():
    # Text objects read the font family when they are created and drawn: hold it for both.
    with matplotlib.rc_context({"font.family": font_families(), "axes.unicode_minus": False}):
        yield


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> None:
    with _style():
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes, for pages that embed their pictures."""
    buffer = io.BytesIO()
    with _style():
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def plot_curves(history: list[dict], best_epoch: int | None = None) -> Figure:
    """Loss and accuracy, train vs validation, side by side; the best epoch is marked."""
    with _style():
        fig = Figure(figsize=(11, 4))
        epochs = [row["epoch"] for row in history]
        for ax, key, title in zip(fig.subplots(1, 2), ("loss", "acc"), ("Loss", "Accuracy")):
            ax.plot(epochs, [row[f"train_{key}"] for row in history], "o-", label="train")
            ax.plot(epochs, [row[f"val_{key}"] for row in history], "o-", label="validation")
            if best_epoch:
                ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
            ax.set_xlabel("epoch")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
    return fig


def plot_confusion(matrix: np.ndarray, classes: list[str]) -> Figure:
    """Counts, rows true and columns predicted; the colour is the row-normalised rate."""
    matrix = np.asarray(matrix)
    n = len(classes)
    side = min(16, max(4, 0.6 * n + 2))
    with _style():
        fig = Figure(figsize=(side + 1, side))
        ax = fig.subplots()
        rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
        fig.tight_layout()
    return fig


def plot_grid(images: np.ndarray, titles: list[str], colors: list[str] | None = None, ncols: int = 8) -> Figure:
    """A grid of (N, C, H, W) uint8 pictures, each titled (e.g. with its label or predicted/true).

    One mosaic image in one Axes, titles as figure text: a subplot per picture cost matplotlib about
    1.3 s per 32-picture grid (Axes, tight layout, drawing each), and every run draws several grids."""
    images = np.asarray(images)
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    channels, height, width = images.shape[1:] if n else (1, 1, 1)
    cell_w, cell_h = 1.8, 2.0  # inches per picture and its title
    # Cells in picture pixels: a margin of 5 % of the width each side, the rest of the cell's height
    # (in the same scale) above the picture for its title.
    pad_x = max(1, round(0.05 * width))
    scale = (width + 2 * pad_x) / cell_w  # picture pixels per inch, the same both ways
    full_h = max(height + 1, round(cell_h * scale))
    if height > full_h * 0.82:  # a tall picture: widen its cell instead
        full_h = round(height / 0.82)
        scale = full_h / cell_h
        pad_x = max(pad_x, round((cell_w * scale - width) / 2))
    full_w = width + 2 * pad_x
    mosaic = np.full((nrows * full_h, ncols * full_w, channels), 255, dtype=np.uint8)
    cells = [divmod(i, ncols) for i in range(n)]
    tops = [row * full_h + full_h - height - max(1, round(0.03 * full_h)) for row, _ in cells]
    for i, ((_, col), top) in enumerate(zip(cells, tops)):
        left = col * full_w + pad_x
        mosaic[top:top + height, left:left + width] = images[i].transpose(1, 2, 0)
    with _style():
        fig = Figure(figsize=(cell_w * ncols, cell_h * nrows))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        ax.imshow(mosaic[:, :, 0] if channels == 1 else mosaic, cmap="gray", vmin=0, vmax=255, aspect="auto",
                  interpolation="nearest" if max(height, width) < 100 else "antialiased")
        for i, ((_, col), top) in enumerate(zip(cells, tops)):
            fig.text((col + 0.5) / ncols, 1 - (top - 0.02 * full_h) / (nrows * full_h), titles[i], fontsize=9,
                     ha="center", va="bottom", color=colors[i] if colors else "black")
    return fig


def plot_study_history(values: list[tuple[int, float]]) -> Figure:
    """Each complete trial's validation loss, and the best so far."""
    with _style():
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        numbers = [n for n, _ in values]
        losses = [v for _, v in values]
        ax.plot(numbers, losses, "o", label="trial")
        ax.plot(numbers, np.minimum.accumulate(losses), "-", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
    return fig


def plot_bars(values: dict[str, float], title: str) -> Figure:
    """Horizontal bars, largest on top."""
    with _style():
        fig = Figure(figsize=(7, 0.4 * len(values) + 1.2))
        ax = fig.subplots()
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names])
        ax.set_title(title)
        fig.tight_layout()
    return fig


def plot_precision_recall(per_class: dict[str, dict]) -> Figure:
    """Per-class precision and recall as paired horizontal bars (validation)."""
    names = list(per_class)[::-1]
    with _style():
        fig = Figure(figsize=(7, 0.35 * len(names) + 1.4))
        ax = fig.subplots()
        y = np.arange(len(names))
        ax.barh(y + 0.2, [per_class[n]["precision"] for n in names], 0.4, label="precision")
        ax.barh(y - 0.2, [per_class[n]["recall"] for n in names], 0.4, label="recall")
        ax.set_yticks(y, names)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(loc="lower right")
        ax.set_title("Per class (validation)")
        fig.tight_layout()
    return fig


def plot_pr_curves(targets: np.ndarray, probs: np.ndarray, classes: list[str], thresholds: list[float],
                   most: int = 12) -> Figure:
    """Several labels per picture: each class's precision-recall curve on validation (the `most`
    frequent classes), with the point its decision threshold gives marked."""
    from sklearn.metrics import precision_recall_curve

    order = np.argsort(-targets.sum(0), kind="stable")[:most]
    order = [k for k in order if targets[:, k].any()]
    cols = min(4, max(1, len(order)))
    rows = max(1, -(-len(order) // cols))
    with _style():
        fig = Figure(figsize=(3.2 * cols, 3 * rows))
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        for ax, k in zip(axes, order):
            precision, recall, cuts = precision_recall_curve(targets[:, k], probs[:, k])
            ax.plot(recall, precision)
            chosen = probs[:, k] >= thresholds[k]
            hits = (chosen & (targets[:, k] > 0)).sum()
            ax.plot([hits / max(targets[:, k].sum(), 1)], [hits / max(chosen.sum(), 1)], "o", color="red",
                    label=f"threshold {thresholds[k]:.2f}")
            ax.set_xlim(0, 1.02)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{classes[k]} ({int(targets[:, k].sum())})", fontsize=9)
            ax.set_xlabel("recall", fontsize=8)
            ax.set_ylabel("precision", fontsize=8)
            ax.legend(fontsize=7, loc="lower left")
            ax.grid(alpha=0.3)
        for ax in axes[len(order):]:
            ax.axis("off")
        fig.tight_layout()
    return fig


def plot_reliability(bins: list[dict], ece: float) -> Figure:
    """Accuracy against confidence per bin, beside the diagonal of perfect calibration."""
    with _style():
        fig = Figure(figsize=(5, 5))
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
        widths = [b["high"] - b["low"] for b in bins]
        ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], widths, align="edge", alpha=0.7,
               edgecolor="black", label="accuracy")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C3",
                label="bin: (mean confidence, accuracy)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"Reliability (validation): ECE {ece:.4f}")
        ax.legend(loc="upper left")
        fig.tight_layout()
    return fig


def plot_lr_find(lrs: list[float], losses: list[float], suggestion: float) -> Figure:
    """The range test: smoothed training loss against the learning rate (log scale), suggestion marked."""
    with _style():
        fig = Figure(figsize=(7, 4.5))
        ax = fig.subplots()
        ax.plot(lrs, losses)
        ax.set_xscale("log")
        if lrs:
            at = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - np.log(suggestion))))
            ax.plot([lrs[at]], [losses[at]], "o", color="C3", markersize=8, label=f"valley: {suggestion:.2e}")
            top = min(max(losses), 1.5 * max(losses[: max(1, len(losses) // 10)]))
            ax.set_ylim(min(losses) - 0.05 * abs(min(losses)), top)
            ax.legend()
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss (smoothed)")
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
    return fig


def plot_run_curves(histories: dict[str, list[dict]]) -> Figure:
    """Several runs' validation loss and accuracy per epoch, overlaid (imgcls runs --plot)."""
    with _style():
        fig = Figure(figsize=(12, 4.5))
        axes = fig.subplots(1, 2)
        for name, history in histories.items():
            epochs = [h["epoch"] for h in history]
            for ax, key in zip(axes, ("val_loss", "val_acc")):
                ax.plot(epochs, [h[key] for h in history], "o-", markersize=3, label=name)
        for ax, title in zip(axes, ("Validation loss", "Validation accuracy")):
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8, loc="lower right")
        fig.tight_layout()
    return fig


def plot_ood_scores(val_raw: np.ndarray, outlier_raw: np.ndarray | None, threshold: float, method: str) -> Figure:
    """The out-of-distribution score of the validation pictures (and of --outliers'), with the threshold."""
    with _style():
        fig = Figure(figsize=(7, 3.2))
        ax = fig.subplots()
        values = np.r_[val_raw, outlier_raw] if outlier_raw is not None else val_raw
        bins = np.linspace(values.min(), values.max(), 40) if len(values) and values.min() < values.max() else 10
        ax.hist(val_raw, bins=bins, alpha=0.6, density=True, label="validation (in distribution)")
        if outlier_raw is not None:
            ax.hist(outlier_raw, bins=bins, alpha=0.6, density=True, label="--outliers")
        ax.axvline(threshold, color="red", linestyle="--", label="threshold: above is unknown")
        ax.set_xlabel(f"{method} score (higher: less like the training pictures)")
        ax.legend(fontsize=8)
        fig.tight_layout()
    return fig


def plot_coverage(curve: list[dict], asked: float) -> Figure:
    """Conformal sets on held-out validation pictures: coverage reached and mean set size per level."""
    with _style():
        fig = Figure(figsize=(7, 3.2))
        left, right = fig.subplots(1, 2)
        levels = [c["level"] for c in curve]
        left.plot(levels, [c["coverage"] for c in curve], "o-", label="reached")
        left.plot([min(levels), 1], [min(levels), 1], "k--", lw=1, label="promised")
        left.axvline(asked, color="grey", lw=1)
        left.set_xlabel("promised coverage")
        left.set_ylabel("coverage (cross-fitted halves)")
        left.legend(fontsize=8)
        right.plot(levels, [c["mean_set_size"] for c in curve], "o-")
        right.axvline(asked, color="grey", lw=1)
        right.set_xlabel("promised coverage")
        right.set_ylabel("mean set size")
        fig.tight_layout()
    return fig
