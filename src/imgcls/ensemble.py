"""`imgcls finetune --models A,B`: one finetune per model, kept as one ensemble folder.

Averaging two different pretrained backbones' probabilities took Dogs vs. Cats from 0.039 (one
EfficientNet-Lite0) to 0.033 (Lite0 + Lite2) in held-out log loss (bench/RESULTS.md). The members
share one train/validation split (the first member's), so the validation pictures score the ensemble
as a whole: ensemble.json records each member's and the mean's validation log loss, and the TTA chosen
on them. predict, evaluate, export and serve given OUT use every member (artifact/files.expand_runs).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .artifact.files import ENSEMBLE, SPLIT
from .config import TrainConfig, config_to_dict
from .engine.checkpoint import write_json
from .errors import UserError
from .runs import new_run_dir

log = logging.getLogger(__name__)


@dataclass
class EnsembleResult:
    run_dir: Path  # the ensemble folder: predict, evaluate, export and serve this one
    members: dict  # model name → its FinetuneResult
    tta: dict | None  # the validation figures and the TTA chosen on them (validation_tta.choose_tta)


def member_folder(model: str) -> str:
    """A member's folder name: the model's name, with a timm hub name's slash replaced."""
    return model.replace("/", "_").replace(":", "_")


def _ensemble_folder(base: TrainConfig, settings: dict, models: list[str]) -> Path:
    """OUT for a new ensemble, or the same OUT again to finish an interrupted one of the same settings."""
    marker = Path(base.out) / ENSEMBLE if base.out else None
    if marker is not None and marker.is_file():
        if json.loads(marker.read_text(encoding="utf-8")).get("settings") != settings:
            raise UserError(f"Received: --out {base.out}, which holds an ensemble with other settings; expected "
                            "a new or empty folder, or the same command as that ensemble's (to resume it)")
        log.info("finetune --models: resuming the ensemble in %s (same settings)", base.out)
        return Path(base.out)
    return new_run_dir(base.out, "ensemble-" + "+".join(member_folder(m) for m in models))


def finetune_ensemble(base: TrainConfig, models: list[str], *, stage1_epochs: int, stage2_epochs: int,
                      unfreeze_last: int, drop_implausible: int, report: bool = True) -> EnsembleResult:
    """Finetune each of `models` (finetune.finetune's two stages) into OUT/<model>, all on the first
    member's split, then choose the TTA on the shared validation pictures and write OUT/ensemble.json."""
    from .finetune import finetune, record_tta
    from .validation_tta import choose_tta

    models = [m.strip() for m in models if m.strip()]
    if len(models) < 2 or len(set(models)) < len(models):
        raise UserError(f"Received: --models {','.join(models)}; expected two or more different model names, "
                        "such as efficientnet_lite0,efficientnet_lite2")
    if base.model is not None and base.model not in models:
        raise UserError(f"Received: --model {base.model} with --models {','.join(models)}; expected one of them")
    from .models.registry import get_spec

    for model in models:  # every member's name and settings, before any of them trains
        get_spec(model)
        dataclasses.replace(base, model=model).validate()
    names = [member_folder(m) for m in models]
    stages = dict(stage1_epochs=stage1_epochs, stage2_epochs=stage2_epochs, unfreeze_last=unfreeze_last,
                  drop_implausible=drop_implausible)
    settings = json.loads(json.dumps({**config_to_dict(base), "out": None, "model": None, "models": models, **stages}))
    out = _ensemble_folder(base, settings, models)
    marker = {"format": "imgcls-ensemble/1", "members": names, "models": models, "settings": settings}
    write_json(out / ENSEMBLE, marker)
    results, split = {}, None
    for model, name in zip(models, names):
        log.info("finetune --models: member %d of %d, %s", len(results) + 1, len(models), model)
        config = dataclasses.replace(base, model=model, out=str(out / name))
        results[model] = finetune(config, report=report, choose_tta=False, shared_split=split, **stages)
        # Later members train and validate on the first member's pictures: one validation set scores all.
        split = split or str(results[model].stage1.run_dir / SPLIT)
    record = choose_tta([out / n for n in names], names, cache=base.cache_settings())
    if record is not None:
        for name, own in record["members"].items():  # each member folder alone answers as it does in OUT
            record_tta(out / name, own)
        write_json(out / ENSEMBLE, {**marker, "tta": record})
    return EnsembleResult(out, results, record)
