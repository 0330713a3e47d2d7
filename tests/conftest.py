"""Tiny image folders written by the tests themselves (no downloads, no shared datasets)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores (pyproject's -n 2 on two): one thread each, for the commands they start too
    # (read when torch is imported), rather than two threads each that wait on one another.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


@pytest.fixture(autouse=True, scope="session")
def _imgcls_home(tmp_path_factory):
    # Keep the cache (decoded pictures, and the built-in digits beside them) inside the test run, never in
    # the user's home; subprocesses the tests start inherit it.
    os.environ["IMGCLS_CACHE_DIR"] = str(tmp_path_factory.mktemp("imgcls_cache"))


def coloured_picture(rng: np.random.Generator, colour: tuple[int, int, int], size: int = 20) -> Image.Image:
    """A noisy picture whose dominant colour is its class: easy to learn in a few epochs."""
    base = np.array(colour, dtype=np.float32)[None, None, :]
    noise = rng.normal(0, 30, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def write_class_folders(root: Path, per_class: int = 12, classes=("red", "green", "blue"), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coloured_picture(rng, COLOURS.get(name, tuple(rng.integers(0, 255, 3))), ).save(folder / f"{i}.png")
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "data")


@pytest.fixture
def csv_folder(tmp_path: Path) -> tuple[Path, Path]:
    """The apparel layout: pictures/<id>.png beside labels.csv with columns id,label (integer labels)."""
    rng = np.random.default_rng(1)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rows = ["id,label"]
    for i in range(1, 31):
        label = i % 3
        coloured_picture(rng, list(COLOURS.values())[label]).convert("L").save(pictures / f"{i}.png")
        rows.append(f"{i},{label}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return pictures, labels


@pytest.fixture
def filename_folder(tmp_path: Path) -> Path:
    """The Dogs vs. Cats layout: labels only in file names (cat.0.jpg, dog.0.jpg)."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "train"
    folder.mkdir()
    for i in range(10):
        coloured_picture(rng, COLOURS["red"], 24).save(folder / f"cat.{i}.jpg")
        coloured_picture(rng, COLOURS["blue"], 24).save(folder / f"dog.{i}.jpg")
    return folder


def folder_snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, to prove a command left the user's files as they were."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """A side x side mask: a plus sign or a hollow square, the same bright ink (only the shape differs)."""
    mask = np.zeros((side, side), dtype=bool)
    if shape == "cross":
        mask[side // 2, :] = mask[:, side // 2] = True
    else:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def write_object_folders(root: Path, per_class: int = 40, size: int = 32, side: int = 7,
                         seed: int = 0) -> dict[str, tuple[int, int, int, int]]:
    """Class folders cross/ and square/ where the class is decided only by a small shape at a random
    place on a noisy grey background; returns each picture's object box (left, top, right, bottom),
    in pixels, right and bottom exclusive (the Grad-CAM localisation check)."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for shape in ("cross", "square"):
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            picture = np.clip(rng.normal(110, 35, (size, size, 3)), 0, 255)
            x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
            picture[y:y + side, x:x + side][_shape_mask(shape, side)] = (255, 230, 40)
            path = folder / f"{i}.png"
            Image.fromarray(picture.astype(np.uint8), "RGB").save(path)
            boxes[str(path)] = (x, y, x + side, y + side)
    return boxes


TAGS = ("clear", "road", "water")
TAG_COLOURS = {"clear": (230, 230, 60), "road": (200, 40, 40), "water": (40, 60, 220)}


def write_tagged(root: Path, count: int = 72, seed: int = 0, sep: str = " ") -> tuple[Path, Path]:
    """Pictures with a stripe of each tag's colour, and a CSV image_name,tags (Planet's layout)."""
    rng = np.random.default_rng(seed)
    pictures = root / "pictures"
    pictures.mkdir(parents=True)
    rows = ["image_name,tags"]
    for i in range(count):
        chosen = [t for k, t in enumerate(TAGS) if (i + 1) >> k & 1]  # every non-empty set, in turn
        pixels = np.full((16, 18, 3), 128.0) + rng.normal(0, 15, (16, 18, 3))
        for k, tag in enumerate(TAGS):
            if tag in chosen:
                pixels[:, 6 * k:6 * k + 6] = TAG_COLOURS[tag]
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(pictures / f"p{i}.png")
        rows.append(f"p{i},{sep.join(chosen)}")
    labels = root / "tags.csv"
    labels.write_text("\n".join(rows) + "\n")
    return pictures, labels
