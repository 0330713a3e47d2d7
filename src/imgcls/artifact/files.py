"""Every file name of a run folder, and which folder a command means. Nothing else spells them."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import UserError

WEIGHTS = "model.safetensors"
CARD = "model.json"  # the model card (card.py)
RESUME = "resume.pt"
CONFIG = "config.yaml"
METRICS = "metrics.json"
DATA = "data.json"
SPLIT = "split.csv"
HISTORY = "history.csv"
VAL_PREDICTIONS = "val_predictions.csv"
TRAIN_PREDICTIONS = "train_predictions.csv"
REPORT = "report.html"
FINETUNE = "finetune.json"  # in a finetune folder: its stages and which one is final
FOLDS = "folds.json"  # in a `train --folds` folder: its folds and the out-of-fold scores
AUDIT = "audit.json"  # in an `imgcls audit` folder: its settings
ENSEMBLE = "ensemble.json"  # in a `finetune --models A,B` folder: its members and the TTA each chose on validation
ONNX = {"onnx": "model.onnx", "int8": "model.int8.onnx"}  # by backend
OOD = "ood.safetensors"  # the out-of-distribution score's fitted tensors (openset/)

log = logging.getLogger(__name__)


def final_run_dir(run_dir: str | Path, quiet: bool = False) -> Path:
    """The run folder a command should use: `run_dir` itself, or for a finetune folder (the one its
    --out named) its final stage, so that `predict OUT ...` does what a user means."""
    run_dir = Path(run_dir)
    if (run_dir / CARD).is_file() or not (run_dir / FINETUNE).is_file():
        return run_dir
    final = run_dir / json.loads((run_dir / FINETUNE).read_text(encoding="utf-8"))["final"]
    if not (final / CARD).is_file():
        raise UserError(f"Received: RUN_DIR {run_dir}, a finetune folder whose final stage {final.name} has not "
                        f"finished; expected {final / CARD} (resume it with imgcls train --resume {final})")
    if not quiet:
        log.info("%s is a finetune folder: using its final stage, %s", run_dir, final)
    return final


def expand_runs(run_dir: str | Path) -> list[Path]:
    """The run folders a path stands for: a `finetune --models` folder's members, a `train --folds`
    folder's folds, an audit folder's folds, else the folder itself."""
    run_dir = Path(run_dir)
    if (run_dir / ENSEMBLE).is_file():
        return [run_dir / name for name in json.loads((run_dir / ENSEMBLE).read_text(encoding="utf-8"))["members"]]
    if (run_dir / FOLDS).is_file():
        return [run_dir / name for name in json.loads((run_dir / FOLDS).read_text(encoding="utf-8"))["folds"]]
    if (run_dir / AUDIT).is_file() and (run_dir / "folds").is_dir():
        return sorted(p.parent for p in (run_dir / "folds").glob(f"fold*/{CARD}"))
    return [run_dir]


def recorded_tta(run_dir: str | Path) -> int:
    """The number of TTA views one run chose on its validation pictures (finetune records it in its final
    stage's metrics.json); 1 where none was chosen."""
    try:
        path = final_run_dir(run_dir, quiet=True) / METRICS
    except UserError:  # a finetune whose final stage has not finished: the command that reads it says so
        return 1
    if not path.is_file():
        return 1
    return int((json.loads(path.read_text(encoding="utf-8")).get("tta") or {}).get("views", 1))


def recorded_member_tta(run_dir: str | Path) -> list[int]:
    """The TTA views each run of a folder (in expand_runs' order) uses when --tta is not given: each
    run's own choice (a `finetune --models` member keeps its own, so that its folder alone answers as
    it does in the ensemble). Ensembles made before 2026-12-08 recorded one choice for all their members
    in ensemble.json (tta.views)."""
    members = expand_runs(run_dir)
    path = Path(run_dir) / ENSEMBLE
    record = (json.loads(path.read_text(encoding="utf-8")).get("tta") or {}) if path.is_file() else {}
    if "views" in record:
        return [int(record["views"])] * len(members)
    return [recorded_tta(member) for member in members]


def run_version(run_dir: str | Path) -> str:
    """A short fingerprint of what a run answers with (its card, weights and fitted score): the same files
    give the same version, so a server can say which model answered and a reload can be seen."""
    import hashlib

    digest = hashlib.sha256()
    for member in expand_runs(run_dir):  # an ensemble's version: all its members' files
        for name in (CARD, WEIGHTS, OOD):
            path = final_run_dir(member, quiet=True) / name
            if path.is_file():
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()[:12]
