"""--track tensorboard and --track mlflow log config, per-epoch metrics and files; a store that cannot be
reached warns once and training finishes."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from imgcls.cli import main
from imgcls.train import train

TINY = dict(source="digits", model="simple-cnn", img_size=12, epochs=2)


def test_tensorboard_and_mlflow_log_every_epoch(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default MLflow store is ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = train(**TINY, out="run", track=["tensorboard", "mlflow"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("val/val_loss")] == [1, 2]
    assert "confusion" in events.Tags()["images"]

    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("imgcls").experiment_id])
    assert run.data.params["model"] == "simple-cnn" and run.data.params["data.source"] == "digits"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(result.val_accuracy, abs=1e-6)
    assert {"model.json", "metrics.json", "report.html"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.info.status == "FINISHED"


def test_an_unreachable_store_warns_once_and_training_finishes(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with caplog.at_level(logging.WARNING, logger="imgcls"):
        result = train(**TINY, out=str(tmp_path / "run"), track=["mlflow"])
    warnings = [r for r in caplog.records if "--track mlflow" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on" in warnings[0].getMessage()
    assert result.best_epoch >= 1 and (result.run_dir / "report.html").is_file()


def test_an_unknown_tracker_is_one_line(tmp_path: Path, capsys):
    assert main(["train", "digits", "--track", "wandb", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Received: track=wandb; expected one of tensorboard, mlflow" in err and len(err.splitlines()) == 1
