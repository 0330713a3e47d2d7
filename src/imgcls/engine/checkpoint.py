"""Weights as safetensors + JSON metadata, resume state as a weights-only .pt, every write atomic.

A crash (even kill -9) mid-write leaves the previous complete file in place: each file is written
beside its target and moved over it with os.replace, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import csv
import io
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import UserError

from ..artifact.files import CARD, RESUME, WEIGHTS

if TYPE_CHECKING:  # torch loads only where a function needs it (the onnx backend never does)
    import torch.nn as nn


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then move tmp_path over `path` in one step.

    The temporary file is created with mode 0666 less the user's umask, as open() would create `path`
    (0644 under umask 022): tempfile.mkstemp's 0600 would leak into every file a run writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # an --out FILE in a folder not made yet
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def csv_text(header: list[str], rows: Iterable[Iterable]) -> str:
    """A header and rows as CSV text ("\n" line ends, quoted where a cell needs it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | Path, header: list[str], rows: Iterable[Iterable]) -> None:
    """Every CSV file imgcls writes: atomically, like write_text."""
    write_text(path, csv_text(header, rows))


def save_tensors(path: str | Path, tensors: dict) -> None:
    """A dict of tensors as safetensors, atomically (the out-of-distribution score's, openset/)."""
    from safetensors.torch import save

    atomic_write(path, lambda tmp: Path(tmp).write_bytes(save(tensors)))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_model(run_dir: str | Path, model: "nn.Module", card) -> None:
    """model.safetensors + model.json (the model card, artifact/card.py): enough to rebuild the model
    and predict with no other file."""
    from safetensors.torch import save

    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # save() to bytes, not save_file(): the latter replaces the file with one of mode 0600.
    atomic_write(run_dir / WEIGHTS, lambda tmp: Path(tmp).write_bytes(save(state)))
    write_json(run_dir / CARD, card.to_json())


def load_weights(run_dir: str | Path, model: "nn.Module") -> None:
    from safetensors.torch import load_file

    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise UserError(f"Received: RUN_DIR {run_dir} without {WEIGHTS}; expected a folder written by imgcls train")
    model.load_state_dict(load_file(str(path)))


def save_resume(run_dir: str | Path, state: dict) -> None:
    """Everything --resume needs (model, optimiser, schedule, RNG, epoch, history); tensors and plain data only."""
    import torch

    atomic_write(Path(run_dir) / RESUME, lambda tmp: torch.save(state, tmp))


def load_resume(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESUME
    if not path.is_file():
        raise UserError(f"Received: --resume {run_dir} without {RESUME}; expected a run folder of imgcls train")
    import torch

    # weights_only: never unpickle arbitrary objects from a file, even our own.
    return torch.load(path, map_location="cpu", weights_only=True)
