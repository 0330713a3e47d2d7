"""`imgcls explain`: where a saved run looks, per picture: a Grad-CAM overlay PNG, a contact sheet and
explain.csv with the heatmap's peak in the picture's own pixels (after undoing the resize and the
border trim), so a script can check it."""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data.decode import DecodeError, Geometry, open_picture
from .data.sources import list_pictures
from .engine.checkpoint import atomic_write, write_csv
from .errors import UserError
from .gradcam import default_layers, explain_batch, find_layer, peak

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

CSV_COLUMNS = ["path", "predicted", "probability", "class", "class_probability", "rank", "peak_x", "peak_y",
               "heatmap"]
OVERLAY_SIDE = 512  # overlays are drawn at the picture's size, at most this many pixels on the longer side


def class_index(name: str | None, card) -> int | None:
    """--class NAME (a class name, or the data's own label) → its index; None: the predicted class."""
    if name is None:
        return None
    for names in (card.classes, card.given_classes or []):
        if name in names:
            return names.index(name)
    raise UserError(f"Received: --class {name!r}; expected one of the run's classes: {', '.join(card.classes)}")


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] → (H, W, 3) uint8 with matplotlib's jet (blue cold, red hot)."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay_on_picture(picture: "Image.Image", heatmap: np.ndarray, geometry: Geometry, alpha: float = 0.45,
                       mark: tuple[float, float] | None = None):
    """The heatmap (at the model's input size) laid over the whole picture, inside the region the model
    saw; `mark` (picture pixels) draws a ring at the peak. Returns a PIL image."""
    from PIL import Image, ImageDraw

    picture = picture.convert("RGB")
    scale = min(1.0, OVERLAY_SIDE / max(picture.size))
    shown = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                           Image.Resampling.BILINEAR) if scale < 1 else picture
    sx, sy = shown.width / geometry.width, shown.height / geometry.height
    left, top, right, bottom = geometry.box
    box = (round(left * sx), round(top * sy), max(round(left * sx) + 1, round(right * sx)),
           max(round(top * sy) + 1, round(bottom * sy)))
    heat = Image.fromarray(heatmap.astype(np.float32), "F").resize((box[2] - box[0], box[3] - box[1]),
                                                                    Image.Resampling.BILINEAR)
    full = np.zeros((shown.height, shown.width), dtype=np.float32)
    region = np.asarray(heat)
    full[box[1]:box[1] + region.shape[0], box[0]:box[0] + region.shape[1]] = region[:shown.height - box[1],
                                                                                    :shown.width - box[0]]
    blended = (np.asarray(shown, dtype=np.float32) * (1 - alpha) + colourise(full) * alpha).astype(np.uint8)
    result = Image.fromarray(blended, "RGB")
    if mark is not None:
        x, y, r = mark[0] * sx, mark[1] * sy, max(3, round(min(shown.size) / 40))
        ImageDraw.Draw(result).ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), width=2)
    return result


def overlay_on_input(picture: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The model's own view (C, H, W) uint8 with the heatmap over it → (3, H, W) uint8 (contact sheets)."""
    rgb = np.repeat(picture, 3, 0) if picture.shape[0] == 1 else picture
    return (rgb.astype(np.float32) * (1 - alpha) + colourise(heatmap).transpose(2, 0, 1) * alpha).astype(np.uint8)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Explained:
    """One picture's explanation of one class."""

    predicted: int
    probability: float
    target: int
    target_probability: float
    peak: tuple[float, float]  # picture pixels
    heatmap: np.ndarray  # model input pixels, [0, 1]
    method: str  # what --method auto chose


def explain_arrays(model: torch.nn.Module, card, pictures: np.ndarray, geometries: list[Geometry],
                   layers: list[str], method: str = "auto", target: int | None = None, top: int = 1,
                   batch_size: int = 16) -> list[list[Explained]]:
    """Per picture (decoded (N, C, S, S) uint8), its `top` classes' explanations (or `target`'s)."""
    from .tasks import get_task

    device = next(model.parameters()).device
    size, task = card.preprocess.size, get_task(card.task)
    results: list[list[Explained]] = []
    for start in range(0, len(pictures), batch_size):
        images = card.preprocess.normalise_torch(torch.from_numpy(pictures[start:start + batch_size]), device)
        first = explain_batch(model, images, layers, method, target, task)
        ranked = task.ranked(first.probs)
        runs = [first] + [explain_batch(model, images, layers, method, ranked[:, r], task)
                          for r in range(1, top if target is None else 1)]
        for i in range(len(images)):
            rows = []
            for result in runs:
                px, py = peak(result.heatmaps[i])
                rows.append(Explained(int(ranked[i, 0]), float(first.probs[i, ranked[i, 0]]), int(result.classes[i]),
                                      float(first.probs[i, result.classes[i]]),
                                      geometries[start + i].to_picture(px, py, size), result.heatmaps[i],
                                      "+".join(result.methods)))
            results.append(rows)
    return results


def explain(run_dir: str | Path, pictures: str | Path, out: str | Path, *, method: str = "auto",
            layer: str | None = None, class_name: str | None = None, top: int = 1, device: str = "auto",
            batch_size: int = 16) -> dict:
    """Write DIR/<picture>.<class>.png overlays, DIR/contact.png and DIR/explain.csv for every picture
    under `pictures`; a picture that does not decode is skipped and listed."""
    from .predict import load_run
    from .report.plots import plot_grid, save_figure

    from .artifact.files import expand_runs

    if top < 1:
        raise UserError(f"Received: --top {top}; expected an integer >= 1")
    members = expand_runs(run_dir)
    if len(members) > 1:
        raise UserError(f"Received: RUN_DIR {run_dir}, an ensemble of {len(members)} runs; expected one run (Grad-CAM "
                        f"explains one network), such as {members[0]}")
    run = load_run(run_dir, device, "torch")  # Grad-CAM needs the gradients only PyTorch has
    card, model = run.card, run.model
    model.requires_grad_(False)  # only the input's gradient path is needed
    target = class_index(class_name, card)
    top = min(top, card.num_classes)
    size, channels = card.preprocess.size, card.preprocess.channels
    if layer is not None:
        find_layer(model, layer)  # an unknown name ends here, before any picture is read
    layers = [layer] if layer else default_layers(model, channels, size)
    out = Path(out)
    source = Path(pictures).resolve()
    if out.resolve() == source or source in out.resolve().parents:
        raise UserError(f"Received: --out {out} inside PICTURES {pictures}; expected a folder of its own "
                        "(explain never writes among the user's pictures)")
    paths, skipped = list_pictures(pictures)
    decoded, geometries, kept = [], [], []
    for path in paths:
        try:
            array, geometry = card.preprocess.decode_with_geometry(path)
        except DecodeError as error:
            skipped.append({"path": path, "reason": str(error)})
            log.warning("skipped %s: %s", path, error)
            continue
        decoded.append(array)
        geometries.append(geometry)
        kept.append(path)
    if not kept:
        raise UserError(f"Received: {pictures} with no picture that decodes; expected pictures to explain")
    array = np.stack(decoded)
    many = card.task == "multi-label" and target is None
    explained = explain_arrays(model, card, array, geometries, layers, method, target,
                               card.num_classes if many else top, batch_size)
    if many:  # several labels per picture: one heatmap per predicted label (at least the most probable)
        from .tasks import get_task

        thresholds = get_task(card.task).thresholds(card, card.num_classes)
        explained = [[e for e in per_class if e.target_probability >= thresholds[e.target]] or per_class[:1]
                     for per_class in explained]
    out.mkdir(parents=True, exist_ok=True)
    classes = card.classes
    rows, sheet, titles = [], [], []
    for path, geometry, picture, per_class in zip(kept, geometries, array, explained):
        original = open_picture(path)
        for rank, e in enumerate(per_class, 1):
            name = f"{Path(path).stem}.{_safe(classes[e.target])}.png"
            image = overlay_on_picture(original, e.heatmap, geometry, mark=e.peak)
            atomic_write(out / name, lambda tmp, image=image: image.save(tmp, format="PNG"))
            rows.append([path, classes[e.predicted], f"{e.probability:.6f}", classes[e.target],
                         f"{e.target_probability:.6f}", rank, f"{e.peak[0]:.1f}", f"{e.peak[1]:.1f}", name])
            sheet.append(overlay_on_input(picture, e.heatmap))
            titles.append(f"{classes[e.target]} {e.target_probability:.2f}")
    write_csv(out / "explain.csv", CSV_COLUMNS, rows)
    save_figure(plot_grid(np.stack(sheet[:64]), titles[:64]), out / "contact.png")
    used = sorted({e.method for per_class in explained for e in per_class})
    log.info("explained %d pictures (%s on %s) → %s", len(kept), ", ".join(used), ", ".join(layers), out)
    return {"out": str(out), "explained": len(kept), "rows": len(rows), "layers": layers, "method": used,
            "skipped": skipped}


def _safe(name: str) -> str:
    """A class name as part of a file name (T-shirt/top → T-shirt_top)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
