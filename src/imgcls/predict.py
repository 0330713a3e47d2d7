"""A saved run + pictures → probabilities → a submission file, or metrics on labelled pictures.

Torch-free where the backend is: with `--backend auto` (the default) a run with a current ONNX export
predicts through onnxruntime without importing torch; the export is made on first use, here, by the
caller (export.ensure_onnx), never inside loading.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .artifact.files import expand_runs, final_run_dir, recorded_member_tta
from .artifact.predictor import (Answers, Predictor, check_backend, check_tta, is_current, load_predictor,
                                 onnxruntime_installed)
from .data.sources import list_pictures, load_samples, outlier_paths
from .data.split_folders import for_scoring
from .data.store import CacheSettings, decode_rows
from .engine.checkpoint import write_json
from .errors import UserError
from .openset import conformal
from .openset.decide import require_score, require_sets, unknown
from .openset.scale import separation
from .submission import check_proba, write_submission

log = logging.getLogger(__name__)


def prepare_backend(run_dir: str | Path, backend: str = "auto") -> str:
    """The backend to load the run with, exporting its ONNX file first where the backend needs one:
    always for onnx; for auto where onnxruntime is installed, falling back to torch (with one line in
    the log) when the model does not export or the run folder cannot be written."""
    check_backend(backend)
    run_dir = final_run_dir(run_dir)
    if backend not in ("auto", "onnx") or is_current(run_dir, "onnx"):
        return backend
    if backend == "auto" and not onnxruntime_installed():
        return "torch"
    from .export import ensure_onnx

    if backend == "onnx":
        ensure_onnx(run_dir)
        return backend
    try:
        ensure_onnx(run_dir)
    except (UserError, OSError, RuntimeError) as error:
        log.info("--backend auto: %s does not export to ONNX (%s); using torch", run_dir, error)
        return "torch"
    return "onnx"


def load_run(run_dir: str | Path, device: str = "auto", backend: str = "torch") -> Predictor:
    """A saved run as a Predictor (artifact/predictor.py): `run.probabilities(pictures)` for decoded
    uint8 pictures, `run.card` its model card, `run.model` the PyTorch module (torch backend).
    backend="auto" picks onnxruntime where it is installed and the model exports (prepare_backend)."""
    return load_predictor(run_dir, prepare_backend(run_dir, backend), device)


def load_model(run_dir: str | Path, device: str = "auto", backend: str = "auto") -> Predictor:
    """What a folder answers with, as one Predictor: a run (or a finetune folder's final stage), or an
    ensemble's members averaged (a `finetune --models` or `train --folds` folder: artifact/ensemble.py);
    each run's default TTA is the one it chose on validation (files.recorded_member_tta)."""
    from .artifact.ensemble import EnsemblePredictor

    members, views = runs_and_views(run_dir, None)
    runs = [load_run(m, device, backend) for m in members]
    for run, chosen in zip(runs, views):
        run.default_tta = chosen
    return runs[0] if len(runs) == 1 else EnsemblePredictor(runs, Path(run_dir))


def runs_and_views(run_dir: str | Path | list, tta: bool | int | None) -> tuple[list[Path], list[int]]:
    """Every run the folder(s) stand for (expand_runs) and the TTA views each uses: `tta` as given, else
    what each chose on validation (an ensemble's choice per member; 1 where none was chosen)."""
    runs: list[Path] = []
    views: list[int] = []
    for folder in run_dir if isinstance(run_dir, (list, tuple)) else [run_dir]:
        members = expand_runs(folder)
        runs += members
        views += [check_tta(tta)] * len(members) if tta is not None else recorded_member_tta(folder)
    if tta is None and any(v > 1 for v in views):
        log.info("TTA as chosen on validation: %s (--tta 1 for none)",
                 ", ".join(f"{run} {v} view(s)" for run, v in zip(runs, views)))
    return runs, views


def answer_images(predictor: Predictor, paths: list[str], batch_size: int | None = None, tta: bool | int | None = None,
                  cache: CacheSettings | None = None) -> tuple[Answers, list[str], list[dict]]:
    """The answers (probabilities, and the run's scores and sets) for the pictures that decode, their
    paths, and the skipped ones."""
    p = predictor.card.preprocess
    # A run trained on border-trimmed pictures sees its test pictures trimmed the same way.
    pictures, ok, skipped = decode_rows(paths, p.channels, p.size, trim=p.trim, cache=cache, resize=p.resize,
                                        crop=p.crop)
    return predictor.answers(pictures, tta=tta, batch_size=batch_size), [paths[i] for i in ok], skipped


def predict_images(predictor: Predictor, paths: list[str], batch_size: int | None = None, tta: bool | int | None = None,
                   cache: CacheSettings | None = None) -> tuple[np.ndarray, list[str], list[dict]]:
    """Probabilities (N, classes) for the pictures that decode, their paths, and the skipped ones."""
    answers, kept, skipped = answer_images(predictor, paths, batch_size, tta, cache)
    return answers.probs, kept, skipped


def ensemble_probabilities(run_dirs: list[str | Path], paths: list[str], *, batch_size: int | None = None,
                           device: str = "auto", views: list[int] | None = None,
                           cache: CacheSettings | None = None,
                           backend: str = "auto") -> tuple[Answers, list[str], list[dict], Predictor]:
    """The mean of several runs' answers (artifact/ensemble.mean_answers; each run with its own input
    size, preprocessing, calibration and TTA views, one view each where `views` is None) for the
    pictures every run could read; the runs must have the same classes and task. Returns the first
    run's predictor too: its card says how to read the mean (its score threshold decides "unknown")."""
    from .artifact.ensemble import check_same_classes, mean_answers

    runs_answers, failed, first = [], {}, None  # runs_answers: per run, (answers, path → row)
    for run_dir, tta in zip(run_dirs, views or [1] * len(run_dirs)):
        run = load_run(run_dir, device, backend)
        first = first or run
        check_same_classes([(str(run_dirs[0]), first.card), (str(run_dir), run.card)])  # before any prediction
        answers, paths_kept, skipped = answer_images(run, paths, batch_size, tta, cache)
        failed.update({item["path"]: item for item in skipped})
        runs_answers.append((answers, {path: row for row, path in enumerate(paths_kept)}))
        del run
    kept = [p for p in runs_answers[0][1] if all(p in rows for _, rows in runs_answers[1:])]
    mean = mean_answers([answers[np.array([rows[p] for p in kept], dtype=np.int64)] for answers, rows in runs_answers],
                        first.card.num_classes)
    return mean, kept, list(failed.values()), first


def predict(run_dir: str | Path | list, images: str | Path, out: str | Path, *, proba: str | bool | None = None,
            template: str | Path | None = None, batch_size: int | None = None, device: str = "auto",
            tta: bool | int | None = None, cache: CacheSettings | None = None, backend: str = "auto",
            label_format: str = "name", sets: bool = False, unknown: bool = False, image_col: str = "image") -> dict:
    """Write `id,label` per picture (submission.write_submission: numeric ids in numeric order,
    proba=CLASS for P(CLASS), proba=True for a column per class (and ood_score), template=CSV for its ids
    and columns, label_format="index" for class positions, sets=True a column with each picture's
    conformal set). unknown=True: a picture the run's out-of-distribution score puts beyond its
    threshold is labelled "unknown" and proba=True adds an ood_score column (off by default: a
    competition file wants a class on every row). tta=True (or 2) averages each
    picture's probabilities with its mirror image's, tta=6 also over one-pixel shifts (tta_views); None:
    what each run chose on validation (runs_and_views). Several run folders (or a `finetune --models`
    or `train --folds` folder): their mean probabilities. image_col: the picture column of parquet or
    save_to_disk files."""
    check_tta(tta)  # a wrong number of views ends here, before any picture is read
    run_dirs, views = runs_and_views(run_dir, tta)
    if len(run_dirs) > 1:
        if sets:
            raise UserError(f"Received: --sets for an ensemble of {len(run_dirs)} runs; expected one run (each run's "
                            "sets are calibrated on its own probabilities, not on their mean)")
        paths, skipped = list_pictures(images, image_col)
        answers, kept, failed, run = ensemble_probabilities(run_dirs, paths, batch_size=batch_size, device=device,
                                                            views=views, cache=cache, backend=backend)
        log.info("ensemble of %d runs: mean probabilities", len(run_dirs))
        check_proba(proba, run.classes)
        if unknown and answers.ood is None:
            raise UserError(f"Received: --unknown for an ensemble of {len(run_dirs)} runs, not all of which have an "
                            "out-of-distribution score; expected runs trained with --ood")
    else:
        run = load_run(run_dirs[0], device, backend)
        check_proba(proba, run.classes)  # before any picture is decoded
        if sets:
            require_sets(run.card, str(run_dirs[0]))
        if unknown:
            require_score(run.card, str(run_dirs[0]), "--unknown")
        paths, skipped = list_pictures(images, image_col)
        answers, kept, failed = answer_images(run, paths, batch_size, views[0], cache)
    return write_submission(answers, kept, skipped + failed, run.card, images, out, proba=proba, template=template,
                            label_format=label_format, sets=sets, unknown=unknown)


def evaluate(run_dir: str | Path, source: str, *, labels: str | None = None, id_col: str = "id",
             label_col: str = "label", ext: str | None = None, label_pattern: str | None = None,
             out: str | Path | None = None, batch_size: int | None = None, device: str = "auto",
             tta: bool | int | None = None, cache: CacheSettings | None = None, backend: str = "auto",
             outliers: str | Path | None = None, image_col: str = "image", label_key: str = "label") -> dict:
    """Score a saved run (or an ensemble folder: its members' mean) on labelled pictures (same layouts as
    train); classes are matched by name. Where the run has them: its conformal sets' coverage and size,
    the share answered "unknown" and the score on the rest; outliers=DIR (pictures outside the classes,
    never used to fit anything): how well the score separates them (AUROC, FPR at 95 % TPR) and the share
    of them answered "unknown". tta=None: what each run chose on validation (runs_and_views)."""
    from .artifact.ensemble import ensemble_card

    check_tta(tta)
    members, views = runs_and_views(run_dir, tta)
    run = load_run(members[0], device, backend) if len(members) == 1 else None
    card = run.card if run is not None else ensemble_card(run_dir)

    def answer(paths: list[str], signatures=None) -> tuple[Answers, np.ndarray, list[dict], Predictor]:
        """The answers for the pictures of `paths` that decode, their indices, the skipped ones, and the
        predictor whose card reads them (an ensemble's first member)."""
        if run is not None:
            p = card.preprocess
            pictures, ok, failed = decode_rows(paths, p.channels, p.size, trim=p.trim, cache=cache, resize=p.resize,
                                               crop=p.crop, signatures=signatures)
            return run.answers(pictures, tta=views[0], batch_size=batch_size), ok, failed, run
        answers, kept, failed, first = ensemble_probabilities(members, paths, batch_size=batch_size, device=device,
                                                              views=views, cache=cache, backend=backend)
        position = {path: i for i, path in enumerate(paths)}
        return answers, np.array([position[path] for path in kept], dtype=np.int64), failed, first

    if outliers is not None:
        require_score(card, str(run_dir))
        outlier_list = outlier_paths(outliers)  # a folder with no picture ends here
    if not (labels or label_pattern):
        source = for_scoring(source)  # a root of train/, val/, test/ folders: its test/
    # Matched by the data's own labels (a run with --class-names knows them as given_classes).
    samples = load_samples(source, labels, id_col, label_col, ext, label_pattern,
                           classes=card.given_classes or card.classes, multi_label=card.task == "multi-label",
                           label_sep=card.label_sep, image_col=image_col, label_key=label_key)
    if not len(samples):
        raise UserError(f"Received: {source} with no picture of the run's classes; expected some of "
                        f"{', '.join(card.classes)}")
    answers, ok, failed, reader = answer(samples.paths, samples.signatures)
    truth = samples.labels[ok]
    metrics = reader.task.metrics(truth, answers.probs, card.classes, card)
    if answers.sets is not None:
        metrics["conformal"] = {"coverage_promised": card.conformal["coverage"],
                                **conformal.coverage_and_size(answers.sets, truth)}
    if answers.ood is not None:
        metrics["ood"] = _rejection(reader, truth, answers, reader.task.headline(metrics)[0])
        if outliers is not None:
            outside = answer(outlier_list)[0]
            metrics["ood"].update(separation(answers.ood, outside.ood), outliers=len(outside),
                                  outliers_rejected=round(float(np.mean(unknown(card, reader.task.decide(outside.probs, card),
                                                                                outside.ood))), 6))
    elif outliers is not None:
        raise UserError(f"Received: --outliers for {run_dir}, not all of whose members have an out-of-distribution "
                        "score; expected runs trained with --ood")
    metrics["skipped"] = samples.skipped + failed
    metrics["task"] = card.task
    metrics["backend"] = reader.backend if run is not None else f"{reader.backend} ({len(members)} runs averaged)"
    if len(members) > 1:
        metrics["members"] = [str(m) for m in members]
    # the views: one number, or each member's where they differ (an ensemble's choice per member)
    metrics["tta"] = views[0] if len(set(views)) == 1 else views
    if out is not None:
        write_json(out, metrics)
    return metrics


def _rejection(run: Predictor, truth: np.ndarray, answers: Answers, name: str) -> dict:
    """The share of these (in-distribution) pictures answered "unknown", and the headline score `name` on
    the rest."""
    card, task = run.card, run.task
    rejected = unknown(card, task.decide(answers.probs, card), answers.ood)
    kept = ~rejected
    after = task.headline(task.metrics(truth[kept], answers.probs[kept], card.classes, card))[1] if kept.any() else None
    return {"method": card.ood["method"], "threshold": card.ood["threshold"],
            "rejected": round(float(rejected.mean()), 6), f"{name}_after_rejection": after}
