"""`imgcls finetune`: the Dogs vs. Cats walkthrough's two-stage transfer-learning recipe in one call.

Stage 1 trains the head on a frozen pretrained backbone (SGD, momentum 0.91, ReduceLROnPlateau with
patience 2); optionally the training pictures the stage-1 model finds most implausible (highest loss)
are left out; stage 2 starts from stage 1's weights with the last blocks unfrozen at a tenth of the
learning rate, on the same train/validation split. Both stages are ordinary `train` runs.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig, config_from_dict, config_to_dict
from .artifact.files import FINETUNE, METRICS, REPORT, WEIGHTS
from .engine.checkpoint import write_csv, write_json
from .engine.optim import DEFAULT_LR
from .errors import UserError
from .runs import new_run_dir
from .tasks import get_task
from .train import RunResult, train

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    stage1: RunResult
    stage2: RunResult
    dropped: list[str]
    tta: dict | None = None  # the TTA chosen on validation (validation_tta.choose_tta)

    @property
    def run_dir(self) -> Path:
        """The final model: predict, evaluate, export and serve this one."""
        return self.stage2.run_dir


def _implausible(run_dir: Path, count: int, out: Path) -> list[str]:
    """The `count` training pictures with the lowest probability of their own label under stage 1's
    model, written to `out` (a CSV that --exclude reads)."""
    path = run_dir / "train_predictions.csv"
    if not path.is_file():
        raise UserError("Received: --drop-implausible with augmentation on; expected --augment none, so that "
                        "stage 1 trains on cached features and scores every training picture")
    with open(path, newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: float(r["p_given"]))[:count]
    write_csv(out, ["path", "label", "predicted", "p_given", "loss", "flagged"],
              ([r["path"], r["label"], r["predicted"], r["p_given"], f"{-math.log(max(float(r['p_given']), 1e-12)):.4f}", 1]
               for r in rows))
    return [r["path"] for r in rows]


def _finetune_folder(base: TrainConfig, settings: dict) -> Path:
    """OUT for a new finetune, or the same OUT again: a finetune of the same settings there (interrupted,
    say) is resumed, its finished stage reused."""
    marker = Path(base.out) / FINETUNE if base.out else None
    if marker is not None and marker.is_file():
        previous = json.loads(marker.read_text(encoding="utf-8")).get("settings")
        if previous != settings:
            raise UserError(f"Received: --out {base.out}, which holds a finetune with other settings; expected "
                            "a new or empty folder, or the same command as that finetune's (to resume it)")
        log.info("finetune: resuming the finetune in %s (same settings)", base.out)
        return Path(base.out)
    return new_run_dir(base.out, f"finetune-{base.model}")


def _run_stage(config: TrainConfig, report: bool = True) -> RunResult:
    """Train one stage into config.out; a finished stage is reused, an interrupted one finished."""
    folder = Path(config.out)
    if (folder / METRICS).is_file() and ((folder / REPORT).is_file() or not report):
        metrics = json.loads((folder / METRICS).read_text(encoding="utf-8"))
        log.info("finetune: %s already finished", folder)
        name, value = get_task(metrics.get("task", "single-label")).headline(metrics["validation"])
        return RunResult(folder, metrics["best_epoch"], value, metrics["validation"]["log_loss"],
                         metrics["train_seconds"], name)
    if (folder / "config.yaml").is_file():
        return train(resume=folder, report=report)
    return train(config, report=report)


def finetune(config: TrainConfig | None = None, *, stage1_epochs: int = 5, stage2_epochs: int = 3,
             unfreeze_last: int = 2, drop_implausible: int = 0, report: bool = True, models: list[str] | None = None,
             choose_tta: bool = True, shared_split: str | None = None, **overrides):
    """Run both stages into OUT/stage1 and OUT/stage2 (OUT: config.out or runs/finetune-<model>), then
    record in finetune.json whether flip TTA lowers the final model's validation log loss
    (validation_tta.py; predict, evaluate and serve follow it unless --tta is given).

    `config` (or the overrides, TrainConfig/DataConfig field names) gives the data, model and the
    stage-1 learning rate. Stage 1 starts from the pretrained weights unless `weights` is given.
    report=False: no plots or report.html in the stages (as train's report=False).
    models=[A, B, ...]: one finetune per model on one shared split, kept as an ensemble in OUT
    (ensemble.finetune_ensemble; returns an EnsembleResult). shared_split: a split.csv to train on, kept
    out of the settings that a resume compares (an ensemble's later members take the first member's, whose
    path changes when the folder is moved).
    """
    if models:
        from .ensemble import finetune_ensemble

        if config is None and not overrides.get("model"):  # a named model: the recipe is "none", not "small"
            overrides = {**overrides, "model": models[0]}
        return finetune_ensemble(config_from_dict(overrides, config), models, stage1_epochs=stage1_epochs,
                                 stage2_epochs=stage2_epochs, unfreeze_last=unfreeze_last,
                                 drop_implausible=drop_implausible, report=report)
    base = config_from_dict(overrides, config)
    base.pretrained = not base.weights
    # Stage 2 starts from stage 1's weights, not pretrained ones: it must see the pictures as stage 1 did.
    base.data = dataclasses.replace(base.data, resize=base.resize_mode())
    if stage1_epochs < 1 or stage2_epochs < 0 or unfreeze_last < 0 or drop_implausible < 0:
        raise UserError(f"Received: stage1-epochs={stage1_epochs}, stage2-epochs={stage2_epochs}, unfreeze-last="
                        f"{unfreeze_last}, drop-implausible={drop_implausible}; expected stage 1 >= 1, the rest >= 0")
    base.validate()
    stages = ["stage1", "stage2"] if stage2_epochs else ["stage1"]
    # Through JSON, so that it compares equal to what finetune.json reads back (tuples become lists).
    settings = json.loads(json.dumps({**config_to_dict(base), "out": None, "stage1_epochs": stage1_epochs,
                                      "stage2_epochs": stage2_epochs, "unfreeze_last": unfreeze_last,
                                      "drop_implausible": drop_implausible}))
    out = _finetune_folder(base, settings)
    # Marks OUT as a finetune folder: predict, evaluate, export and serve of OUT use its final stage.
    marker = {"format": "imgcls-finetune/1", "stages": stages, "final": stages[-1], "settings": settings}
    write_json(out / FINETUNE, marker)
    lr = base.lr if base.lr is not None else DEFAULT_LR["sgd"]
    # Both stages cache the frozen blocks' output before the last `unfreeze_last` blocks: stage 1 runs
    # those few blocks every epoch, and stage 2 reuses the cache instead of recomputing the backbone.
    data = dataclasses.replace(base.data, split_file=shared_split) if shared_split else base.data
    stage1 = dataclasses.replace(base, data=data, freeze="backbone", unfreeze=[], unfreeze_last=None,
                                 optimizer="sgd", momentum=0.91, scheduler="plateau", epochs=stage1_epochs, lr=lr,
                                 cache_before_last=unfreeze_last, out=str(out / "stage1"))
    log.info("finetune stage 1: head only, %d epochs, SGD lr %g momentum 0.91, plateau", stage1_epochs, lr)
    first = _run_stage(stage1, report)
    if stage2_epochs == 0:
        return _finished(FinetuneResult(first, first, []), out, choose_tta, base)
    data = dataclasses.replace(base.data, split_file=str(first.run_dir / "split.csv"))
    dropped: list[str] = []
    if drop_implausible:
        suspects = out / "implausible.csv"
        dropped = _implausible(first.run_dir, drop_implausible, suspects)
        data = dataclasses.replace(data, exclude=str(suspects), exclude_top=None)
        log.info("left out the %d most implausible training pictures (listed in %s)", len(dropped), suspects)
    stage2 = dataclasses.replace(stage1, data=data, pretrained=False, weights=str(first.run_dir / WEIGHTS),
                                 freeze="backbone", unfreeze_last=unfreeze_last, lr=lr / 10,
                                 epochs=stage2_epochs, out=str(out / "stage2"))
    log.info("finetune stage 2: last %d blocks of each backbone unfrozen, lr %g", unfreeze_last, lr / 10)
    second = _run_stage(stage2, report)
    log.info("stage 1 val log loss %.5f → stage 2 %.5f; final model: %s", first.val_log_loss,
             second.val_log_loss, second.run_dir)
    return _finished(FinetuneResult(first, second, dropped), out, choose_tta, base)


def _finished(result: FinetuneResult, out: Path, choose_tta: bool, base: TrainConfig) -> FinetuneResult:
    """The finished finetune, with the TTA its validation pictures chose recorded (record_tta)."""
    from .validation_tta import choose_tta as choose

    record = choose([out], cache=base.cache_settings()) if choose_tta else None
    if record is not None:
        record_tta(out, record)
    result.tta = record
    return result


def record_tta(out: Path, record: dict) -> None:
    """Keep a finetune's TTA choice (validation_tta) in its finetune.json and in its final stage's
    metrics.json, so that the stage folder alone answers the same way."""
    marker = json.loads((Path(out) / FINETUNE).read_text(encoding="utf-8"))
    metrics = Path(out) / marker["final"] / METRICS
    write_json(metrics, {**json.loads(metrics.read_text(encoding="utf-8")), "tta": record})
    write_json(Path(out) / FINETUNE, {**marker, "tta": record})
