"""`imgcls tune`: an Optuna search over training settings, using the same `train` for every trial.

The study lives in a SQLite database (default OUT/study.db), so an interrupted tune resumes where
it stopped when run again, and several `imgcls tune` processes can share one study. Trials report
their validation loss after every epoch to a median pruner, which stops the hopeless ones early.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig, config_from_dict, config_to_dict, load_yaml
from .engine.checkpoint import write_csv, write_text
from .engine.trainer import Callback, Trainer
from .artifact.files import METRICS
from .choices import TUNE_SAMPLERS as SAMPLERS
from .errors import UserError
from .models.registry import get_spec

log = logging.getLogger(__name__)

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
    "optimizer": {"type": "categorical", "choices": ["adam", "adamw", "sgd"]},
    "augment": {"type": "categorical", "choices": ["none", "light", "standard"]},
    "mixup": {"type": "categorical", "choices": [0.0, 0.2, 0.4]},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "model_args.width": {"type": "categorical", "choices": [16, 32, 64]},  # models with a width only
}


def default_space(model: str, multi_label: bool = False) -> dict[str, dict[str, Any]]:
    """The default space, less the model width when the model has no `width` argument, and less MixUp
    for several labels per picture (it mixes single labels)."""
    space = dict(DEFAULT_SPACE)
    if multi_label:
        space.pop("mixup")
    if "width" not in inspect.signature(get_spec(model).builder).parameters:
        space.pop("model_args.width")
    return space


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """A YAML mapping of name → {type: float|int|categorical, low, high, log} or {type, choices}."""
    space = load_yaml(path)
    for name, spec in space.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        ok = (kind in ("float", "int") and "low" in spec and "high" in spec) or (
            kind == "categorical" and isinstance(spec.get("choices"), list) and spec["choices"])
        if not ok:
            raise UserError(f"Received: search space entry {name}: {spec!r} in {path}; expected "
                            "{type: float|int, low: A, high: B[, log: true]} or {type: categorical, choices: [...]}")
    return space


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per entry; `model_args.NAME` entries go into the model's arguments."""
    values: dict[str, Any] = {}
    for name, spec in space.items():
        if spec["type"] == "float":
            value = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif spec["type"] == "int":
            value = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            value = trial.suggest_categorical(name, spec["choices"])
        values[name] = value
    return values


def apply_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    flat = {k: v for k, v in params.items() if not k.startswith("model_args.")}
    model_args = {**base.model_args, **{k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("model_args.")}}
    return config_from_dict({**flat, "model_args": model_args}, base)


class ReportToOptuna(Callback):
    """Feed each epoch's validation loss to the pruner; stop the trial when it says so."""

    def __init__(self, trial):
        self.trial = trial

    def on_epoch_end(self, trainer: Trainer, row: dict, improved: bool) -> None:
        import optuna
        if row["val_loss"] != row["val_loss"]:  # NaN: an epoch --val-every did not validate
            return
        self.trial.report(row["val_loss"], row["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} (val loss {row['val_loss']:.4f})")


def open_storage(url: str, attempts: int = 5) -> "optuna.storages.RDBStorage":  # noqa: F821
    """Optuna's RDB storage at `url`, created if new.

    Two processes that open a new database at the same moment both try to create its tables, and
    the slower one fails with "table ... already exists" (optuna#1092, #4621: upstream leaves it to
    the user). By then the tables are there, so opening again a moment later succeeds. Without the
    retry, 16 of 60 processes opening 15 new SQLite databases four at a time failed.
    """
    import optuna

    for attempt in range(attempts):
        try:
            # The heartbeat lets a later or parallel process mark the trials of a killed one as failed.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)
        except Exception as error:  # a malformed URL, an unreachable database, or the race above
            racing = "already exists" in str(error) or "UNIQUE constraint failed" in str(error)
            if racing and attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise UserError(f"Received: --storage {url} ({str(error).splitlines()[0]}); expected e.g. "
                            "sqlite:///study.db") from None
    raise AssertionError("unreachable")


def tune(base: TrainConfig, trials: int, *, out: str | Path = "runs/tune", space: dict | None = None,
         storage: str | None = None, study_name: str = "imgcls", timeout: float | None = None,
         sampler: str = "tpe") -> "optuna.Study":  # noqa: F821
    """Run trials until the study holds `trials` finished (complete or pruned) ones; return the study."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from .train import train

    if sampler not in SAMPLERS:
        raise UserError(f"Received: sampler={sampler}; expected one of {', '.join(SAMPLERS)}")
    if trials < 1:
        raise UserError(f"Received: trials={trials}; expected an integer >= 1")
    base.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    space = space or default_space(base.model, base.data.multi_label)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    rdb = open_storage(url)
    study = optuna.create_study(study_name=study_name, storage=rdb, direction="minimize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
                                load_if_exists=True)
    # Seeded, but offset by the trials already there: a resumed study must not replay the same draws.
    seed = base.data.seed + len(study.trials)
    study.sampler = (optuna.samplers.TPESampler(seed=seed) if sampler == "tpe"
                     else optuna.samplers.RandomSampler(seed=seed))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    log.info("study %r in %s: %d of %d trials finished", study_name, url, done, trials)

    def objective(trial) -> float:
        config = apply_params(base, suggest(trial, space))
        config.out = str(out / "trials" / f"{trial.number:03d}")
        result = train(config, callbacks=[ReportToOptuna(trial)], report=False)  # no plots per trial
        trial.set_user_attr("val_accuracy", result.val_accuracy)  # the task's headline (micro-F1 for several labels)
        trial.set_user_attr("run_dir", str(result.run_dir))
        if base.data.multi_label:  # several labels per picture: the objective is validation mAP (as 1 - mAP)
            validation = json.loads((result.run_dir / METRICS).read_text(encoding="utf-8"))["validation"]
            trial.set_user_attr("val_mAP", validation["mAP"])
            return 1 - validation["mAP"]
        return result.val_log_loss

    if done < trials:
        logging.getLogger("optuna.study._optimize").addFilter(_without_traceback)  # where Optuna logs a failed trial
        study.optimize(objective, n_trials=trials - done, timeout=timeout, catch=(),
                       callbacks=[MaxTrialsCallback(trials, states=finished)])
    write_results(study, base, out)
    return study


def _without_traceback(record: logging.LogRecord) -> bool:
    """Optuna logs a failed trial with its traceback; for a stop, a user mistake or a full disk the
    CLI's one line says it all (the trial is still marked failed in the study)."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, (KeyboardInterrupt, UserError, OSError)):
        record.exc_info, record.exc_text = None, None
    return True


def write_results(study, base: TrainConfig, out: Path) -> None:
    """best.yaml (usable with `imgcls train --config`), trials.csv, history.png, importances.png."""
    from optuna.trial import TrialState

    from .report.plots import plot_bars, plot_study_history, save_figure

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = sorted({k for t in study.trials for k in t.params})
    write_csv(out / "trials.csv", ["number", "state", "val_loss", "val_accuracy", "seconds", *names],
              ([t.number, t.state.name, t.value if t.value is not None else "", t.user_attrs.get("val_accuracy", ""),
                (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else "",
                *[t.params.get(n, "") for n in names]] for t in study.trials))
    if not complete:
        return
    best = apply_params(dataclasses.replace(base, out=None), study.best_trial.params)
    write_text(out / "best.yaml", yaml.safe_dump(config_to_dict(best), sort_keys=False, allow_unicode=True))
    save_figure(plot_study_history([(t.number, t.value) for t in complete]), out / "history.png")
    if len(complete) >= 3:
        import optuna
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as error:  # e.g. every trial drew the same values
            log.info("no parameter importances: %s", error)
        else:
            save_figure(plot_bars(importances, "parameter importance (fANOVA)"), out / "importances.png")
