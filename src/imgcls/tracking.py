"""Experiment tracking: --track tensorboard (event files in the run folder) and --track mlflow (a local
store under ./mlruns, or MLFLOW_TRACKING_URI). Each logs the config, every epoch's metrics and the
run's final files.

A tracker is a guest: the first failure (a store that cannot be reached, a full disk) is logged once
as a warning, the tracker switches itself off, and training goes on.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .engine.trainer import Callback, Trainer
from .choices import TRACKERS
from .errors import UserError

log = logging.getLogger(__name__)

_INSTALL = "pip install 'imgcls[track]' (tensorboard, mlflow-skinny)"
# The run's files that a tracker keeps (resume.pt is the crash-recovery state, not a result).
ARTEFACTS = ("model.json", "model.safetensors", "metrics.json", "config.yaml", "history.csv", "report.html",
             "curves.png", "confusion.png", "top_losses.png", "reliability.png", "per_class.png")
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def flat(values: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as flat `data.source`-style keys (what both trackers store as parameters)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class Tracker(Callback):
    """Calls its backend's methods and turns the first failure into one warning and silence."""

    name = "tracker"

    def __init__(self, folder: Path, config: dict):
        self.folder, self.config, self.on = Path(folder), config, True

    def _safely(self, what: str, call, *args) -> None:
        if not self.on:
            return
        try:
            call(*args)
        except Exception as error:  # noqa: BLE001 - tracking must never stop a run
            self.on = False
            log.warning("--track %s: could not %s (%s: %s); tracking is off for this run, training goes on",
                        self.name, what, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")

    def on_fit_start(self, trainer: Trainer) -> None:
        self._safely("start", self.start)

    def on_epoch_end(self, trainer: Trainer, row: dict, improved: bool) -> None:
        self._safely("log epoch metrics", self.epoch, row)

    def finish(self, metrics: dict) -> None:
        """After the run folder is complete: final metrics and files."""
        self._safely("log the run's files", self.end, metrics)
        self._safely("close", self.close)

    def start(self) -> None: ...
    def epoch(self, row: dict) -> None: ...
    def end(self, metrics: dict) -> None: ...
    def close(self) -> None: ...


class TensorBoard(Tracker):
    name = "tensorboard"

    def start(self) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(self.config, sort_keys=False) + "\n```")

    def epoch(self, row: dict) -> None:
        for key in EPOCH_METRICS:
            self.writer.add_scalar(f"{key.split('_')[0]}/{key}" if "_" in key else key, row[key], row["epoch"])
        self.writer.flush()

    def end(self, metrics: dict) -> None:
        import numpy as np
        from PIL import Image

        val = metrics["validation"]
        self.writer.add_hparams(flat({k: v for k, v in self.config.items() if k != "data"}),
                                {"hparam/val_accuracy": val["accuracy"], "hparam/val_log_loss": val["log_loss"]},
                                run_name=".")
        for name in ARTEFACTS:
            if name.endswith(".png") and (self.folder / name).is_file():
                picture = np.asarray(Image.open(self.folder / name).convert("RGB"))
                self.writer.add_image(name[:-4], picture, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class MLflow(Tracker):
    name = "mlflow"

    def start(self) -> None:
        import mlflow

        # A store that cannot be reached should cost seconds, not MLflow's default 7 retries of 120 s.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        uri = os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri()
        self.client = mlflow.MlflowClient(uri)
        experiment = self.client.get_experiment_by_name("imgcls")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            "imgcls", artifact_location=(Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
            if uri.startswith("sqlite:///") else None)
        self.run_id = self.client.create_run(experiment_id, run_name=self.folder.name).info.run_id
        params = flat(self.config)
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            chunk = list(params.items())[start:start + 100]
            self.client.log_batch(self.run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in chunk])
        self.client.set_tag(self.run_id, "imgcls.run_dir", str(self.folder.resolve()))

    def epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(row[k]), stamp, row["epoch"])
                                                    for k in EPOCH_METRICS])

    def end(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        val, stamp = metrics["validation"], _now_ms()
        self.client.log_batch(self.run_id, metrics=[
            Metric("best_val_accuracy", val["accuracy"], stamp, 0), Metric("best_val_log_loss", val["log_loss"], stamp, 0),
            Metric("best_epoch", metrics["best_epoch"], stamp, 0)])
        for name in ARTEFACTS:
            if (self.folder / name).is_file():
                self.client.log_artifact(self.run_id, str(self.folder / name))

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def default_mlflow_uri() -> str:
    """./mlruns/mlflow.db: MLflow 3's own default backend (SQLite; its file store now refuses to start
    unless MLFLOW_ALLOW_FILE_STORE is set), kept in the mlruns folder users know, artefacts beside it."""
    folder = Path("mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def check_trackers(names: list[str]) -> None:
    """Unknown names and missing packages end here, before any picture is read."""
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"Received: --track {name}; expected one of {', '.join(TRACKERS)}")
        module = "tensorboard" if name == "tensorboard" else "mlflow"
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"Received: --track {name} without the {module} package; expected it installed: "
                            f"{_INSTALL}") from None


def make_trackers(names: list[str], folder: Path, config: dict) -> list[Tracker]:
    check_trackers(names)
    classes = {"tensorboard": TensorBoard, "mlflow": MLflow}
    return [classes[name](folder, config) for name in names]
