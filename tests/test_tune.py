"""A tiny Optuna study on digits, killed mid-study and resumed: the trial count continues."""
import csv
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from imgcls.config import config_from_dict, load_yaml, resolve_config
from imgcls.errors import UserError
from imgcls.tune import default_space, load_space, tune

SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
         "model_args.width": {"type": "categorical", "choices": [4, 8]}}


def test_killed_study_resumes_and_the_trial_count_continues(tmp_path: Path):
    out = tmp_path / "study"
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 0.001, high: 0.01, log: true}\n"
                     "model_args.width: {type: categorical, choices: [4, 8]}\n")
    process = subprocess.Popen([sys.executable, "-m", "imgcls", "tune", "digits", "--model", "simple-cnn", "--img-size", "16",
                                "--epochs", "30", "--trials", "3", "--space", str(space), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "tune.log", "w"))
    deadline = time.time() + 120
    running = False
    while time.time() < deadline and process.poll() is None and not running:
        time.sleep(0.5)
        # Read-only: opening it through Optuna would create the tables too and race the tune process.
        try:
            with closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True)) as db:
                reported = db.execute("SELECT COUNT(*) FROM trial_intermediate_values").fetchone()[0]
        except sqlite3.Error:  # not created yet
            continue
        # Kill during the first trial's training, after it has reported a few epochs.
        running = reported >= 2
    assert running, (f"the study never got going (exit code {process.poll()}): "
                     f"{(tmp_path / 'tune.log').read_text()[-2000:]}")
    process.kill()
    process.wait()

    base = resolve_config(overrides={"source": "digits", "model": "simple-cnn", "img_size": 16, "epochs": 2})
    study = tune(base, 3, out=out, space=load_space(space))
    finished = [t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]
    assert len([t for t in finished if t.state.name in ("COMPLETE", "PRUNED")]) == 3
    killed = study.trials[0]
    # The killed trial stays RUNNING (its heartbeat's 90 s grace has not passed), holding the epochs it reported;
    # it is neither counted towards --trials nor reused: three new trials finished after it.
    assert killed.state.name == "RUNNING" and len(killed.intermediate_values) >= 2 and killed.value is None
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert len(rows) == 4 and set(rows[0]) >= {"number", "state", "val_loss", "lr", "model_args.width"}
    best = config_from_dict(load_yaml(out / "best.yaml"))
    assert best.model_args["width"] in (4, 8) and 1e-3 <= best.lr <= 1e-2
    assert (out / "history.png").is_file()


def test_space_checks():
    assert "model_args.width" in default_space("simple-cnn")
    assert "model_args.width" not in default_space("lenet5")


def test_bad_space_and_sampler(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: {type: float, low: 0.1}\n")
    with pytest.raises(UserError, match="search space entry lr"):
        load_space(bad)
    with pytest.raises(UserError, match="sampler"):
        tune(resolve_config(overrides={"source": "digits"}), 1, out=tmp_path / "s", sampler="grid")


def _open_at_once(url: str, barrier) -> None:
    from imgcls.tune import open_storage
    barrier.wait()
    open_storage(url)


def test_processes_opening_a_new_study_database_at_once_all_succeed(tmp_path: Path):
    """Several `imgcls tune` workers started together on one new database: Optuna has each create the
    tables, and without the retry the slower ones died with "table ... already exists"."""
    import multiprocessing
    context = multiprocessing.get_context("fork")
    for attempt in range(5):  # each round a new database, so the race gets several chances
        url = f"sqlite:///{tmp_path / f'study{attempt}.db'}"
        barrier = context.Barrier(4)
        workers = [context.Process(target=_open_at_once, args=(url, barrier)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
