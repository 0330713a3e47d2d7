"""The command line: parse → build a config → call the library. No logic of its own."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from . import stopping
from .cli_parser import build_parser
from .errors import UserError


def _cache_settings(args: argparse.Namespace):
    from .data.store import CacheSettings
    return CacheSettings(args.cache, args.cache_dir)


def _cmd_cache(args: argparse.Namespace) -> None:
    from .data.cache_folder import clear, clear_listings, list_entries
    from .data.store import cache_root

    root = cache_root(args.cache_dir)
    if args.action == "clear":
        removed = clear(root, args.older_than)
        listings = clear_listings(root, args.older_than)
        print(f"cleared {len(removed)} entries ({sum(e['bytes'] for e in removed) / 2**20:,.1f} MB) and "
              f"{listings} kept listings from {root}")
        return
    entries = list_entries(root)
    print(f"{root}: {len(entries)} entries, {sum(e['bytes'] for e in entries) / 2**20:,.1f} MB")
    for e in entries:
        print(f"  {e['name']:40} {e['pictures']:>9,} pictures {e['bytes'] / 2**20:>10,.1f} MB  "
              f"last used {e['age_s'] / 86400:.1f} days ago")


TUNE_ONLY = ("trials", "space", "storage", "study", "timeout", "folds", "stage1_epochs",
             "stage2_epochs", "drop_implausible", "steps", "models")


def _train_config(values: dict):
    """Flags given → a resolved TrainConfig (defaults < --config YAML < flags)."""
    from .config import resolve_config

    if "data" not in values and values.get("config") is None:
        raise UserError("Received: no DATA; expected a folder of pictures, 'digits', or --config YAML")
    overrides = {k: v for k, v in values.items() if k not in ("command", "quiet", "config", *TUNE_ONLY)}
    if "data" in overrides:
        overrides["source"] = overrides.pop("data")
    model_args = dict(overrides.pop("model_arg", None) or [])
    if "backbones" in overrides:
        model_args["backbones"] = overrides.pop("backbones")
    if model_args:
        overrides["model_args"] = model_args
    return resolve_config(values.get("config"), overrides)


def _cmd_tune(args: argparse.Namespace) -> None:
    values = vars(args)
    # (--sampler here is Optuna's, not the training sampler's)
    base = _train_config({k: v for k, v in values.items() if k not in ("out", "sampler")})  # mistakes end here
    from .tune import load_space, tune

    space = values.get("space")
    study = tune(base, args.trials, out=args.out, space=load_space(space) if space else None,
                 storage=values.get("storage"), study_name=args.study, timeout=values.get("timeout"),
                 sampler=args.sampler)
    complete = [t for t in study.trials if t.value is not None]
    if not complete:
        print(f"no trial completed; see {args.out}/trials.csv")
        return
    best = study.best_trial
    objective = "1 - val mAP" if base.data.multi_label else "val loss"
    print(f"{len(study.trials)} trials; best #{best.number}: {objective} {best.value:.4f}, val accuracy "
          f"{best.user_attrs.get('val_accuracy', float('nan')):.4f}, {best.params}\n"
          f"train it with: imgcls train --config {args.out}/best.yaml")


def _cmd_audit(args: argparse.Namespace) -> None:
    values = vars(args)
    data = values.get("data")
    if data is not None and any((Path(data) / name).is_file() for name in ("model.json", "finetune.json")):
        from .audit import audit_run
        from .artifact.files import final_run_dir
        suspects, out = audit_run(data), final_run_dir(data)
    else:
        config = _train_config({k: v for k, v in values.items() if k != "out"})
        from .audit import audit
        suspects = audit(config, args.folds, args.out)
        out = Path(args.out)
    flagged = sum(s["flagged"] for s in suspects)
    print(f"{flagged} of {len(suspects)} pictures flagged; ranked list: {out / 'suspects.csv'}, "
          f"top suspects: {out / 'suspects.png'}\nretrain without them: imgcls train ... --exclude "
          f"{out / 'suspects.csv'} [--top N]")


def _cmd_finetune(args: argparse.Namespace) -> None:
    values = vars(args)
    models = [m for m in (values.get("models") or "").split(",") if m.strip()]
    if models and not values.get("model"):
        values["model"] = models[0]  # a named model: the recipe is "none", not "small"
    config = _train_config(values)
    from .finetune import finetune

    result = finetune(config, stage1_epochs=args.stage1_epochs, stage2_epochs=args.stage2_epochs,
                      unfreeze_last=values.get("unfreeze_last", 2), drop_implausible=args.drop_implausible,
                      models=models or None)
    for model, member in (result.members.items() if models else [(None, result)]):
        for name, run in (("stage 1", member.stage1), ("stage 2", member.stage2)):
            print(f"{model + ' ' if model else ''}{name}: best epoch {run.best_epoch}, val "
                  f"{run.score_name.replace('_', '-')} {run.val_accuracy:.4f}, log loss {run.val_log_loss:.4f}, "
                  f"{run.train_seconds:.1f} s -> {run.run_dir}")
    if result.tta is not None and "member_views" in result.tta:
        ll, chosen = result.tta["log_loss"], result.tta["member_views"]
        print(f"ensemble: validation log loss {ll['chosen']:.4f} with each member's TTA chosen on it ({ll['1']:.4f} "
              f"without, {ll['2']:.4f} with flip TTA for all): predict uses "
              f"{', '.join(f'{m} {v} view(s)' for m, v in chosen.items())} unless --tta is given")
    elif result.tta is not None:
        ll = result.tta["log_loss"]
        print(f"final model: validation log loss {ll['1']:.4f} ({ll['2']:.4f} with flip TTA): predict uses "
              f"{result.tta['views']} view(s) unless --tta is given")
    print(f"predict with: imgcls predict {result.run_dir} IMAGES --out submission.csv")


def _cmd_lr_find(args: argparse.Namespace) -> None:
    values = vars(args)
    config = _train_config({k: v for k, v in values.items() if k != "out"})
    from .lr_find import lr_find

    result = lr_find(config, out=values.get("out"), steps=args.steps)
    print(f"suggested lr {result.suggestion:.3g} (fastai's valley, {len(result.lrs)} batches) -> "
          f"{result.folder}/lr_find.png\ntrain with it: imgcls train ... --lr {result.suggestion:.3g} (or --lr auto)")


def _launch_torchrun(nproc: int, argv: list[str]) -> None:
    """Re-run this same command under torchrun with N processes (torchrun manages them, not imgcls)."""
    from torch.distributed.run import main as torchrun

    if nproc < 1:
        raise UserError(f"Received: --nproc {nproc}; expected an integer >= 1")
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    torchrun(["--standalone", "--nproc_per_node", str(nproc), "-m", "imgcls", *rest])


def _cmd_train(args: argparse.Namespace, argv: list[str]) -> None:
    values = vars(args)
    nproc = values.pop("nproc", 1)
    if nproc != 1 and "WORLD_SIZE" not in os.environ:
        _launch_torchrun(nproc, argv)
        return
    if "resume" in values:
        others = set(values) - {"resume", "command", "quiet"}
        if others:
            raise UserError(f"Received: --resume with {', '.join(sorted(others))}; expected --resume RUN_DIR alone "
                            "(the run's config.yaml holds its settings)")
        from .train import train
        result = train(resume=values["resume"])
    elif "folds" in values:
        config = _train_config(values)
        from .folds import train_folds
        out, summary = train_folds(config, values["folds"])
        oof = summary["out_of_fold"]
        name = next(iter(oof))  # the task's headline figure: accuracy, or micro-F1 for several labels
        print(f"{len(summary['folds'])} folds: out-of-fold {name.replace('_', '-')} {oof[name]:.4f}, log loss "
              f"{oof['log_loss']:.4f} on {oof['count']} pictures -> {out}\npredict with the ensemble: imgcls predict "
              f"{out} IMAGES --out submission.csv")
        return
    else:
        config = _train_config(values)  # a mistake ends here, before torch loads
        from .train import train
        result = train(config)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 speaks for the run
    print(f"best epoch {result.best_epoch}: val {result.score_name.replace('_', '-')} {result.val_accuracy:.4f}, "
          f"log loss {result.val_log_loss:.4f}, {result.train_seconds:.1f} s -> {result.run_dir}")


def _cmd_models(args: argparse.Namespace) -> None:
    if args.name is None:
        from .models.catalogue import format_listing  # no torch: the listing answers at once
        print(format_listing())
        return
    from .models.registry import create_model, get_spec
    from .models.summary import format_summary, summarize

    spec = get_spec(args.name)
    size, chans = args.img_size or spec.input_size, args.channels or spec.channels
    model = create_model(args.name, args.classes, chans, size)
    print(f"{args.name}: input {size}x{size}x{chans}, {args.classes} classes")
    print(format_summary(summarize(model, chans, size), model))
    print("blocks (for --unfreeze):", ", ".join(n for group in model.block_groups() for n, _ in group))
    from .gradcam import default_layers
    try:
        layers = ", ".join(default_layers(model, chans, size))
    except UserError:  # a ViT's blocks give tokens, not feature maps
        layers = "none (no block gives a feature map: imgcls explain does not support this model)"
    print("Grad-CAM layer (imgcls explain's default --layer):", layers)


def _cmd_check(args: argparse.Namespace) -> None:
    from .check import check
    from .config import DataConfig
    data = DataConfig(source=args.data, labels=args.labels, id_col=args.id_col, label_col=args.label_col,
                      ext=args.ext, label_pattern=args.label_pattern, val=args.val, image_col=args.image_col,
                      label_key=args.label_key)
    _, summary = check(data, min_pixels=args.min_pixels, out=args.out, cache=_cache_settings(args))
    print(f"{summary['pictures_with_issues']} of {summary['pictures']} pictures have issues: "
          f"{json.dumps(summary['issues'])}; class imbalance {summary['class_imbalance']}\n"
          f"see {args.out}/quality.html (train with --clean to apply the default actions)")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .predict import evaluate
    from .tasks import get_task
    metrics = evaluate(args.run_dir, args.data, labels=args.labels, id_col=args.id_col,
                       label_col=args.label_col, ext=args.ext, label_pattern=args.label_pattern,
                       image_col=args.image_col, label_key=args.label_key,
                       out=args.out, device=args.device, tta=args.tta, cache=_cache_settings(args),
                       backend=args.backend, outliers=args.outliers)
    print(json.dumps(get_task(metrics.get("task", "single-label")).summary(metrics)))
    for part in ("conformal", "ood"):  # where the run has them: sets' coverage and size, "unknown" and outliers
        if part in metrics:
            print(json.dumps({part: metrics[part]}))
    if metrics["skipped"]:
        print(f"{len(metrics['skipped'])} pictures skipped (see the log above)")


def _cmd_predict(args: argparse.Namespace) -> None:
    if len(args.paths) < 2:
        raise UserError(f"Received: predict {' '.join(args.paths)}; expected RUN_DIR [RUN_DIR ...] IMAGES")
    run_dirs, images = args.paths[:-1], args.paths[-1]
    from .predict import predict  # torch is imported only where the backend needs it
    result = predict(run_dirs if len(run_dirs) > 1 else run_dirs[0], images, args.out, proba=args.proba,
                     template=args.template, tta=args.tta, cache=_cache_settings(args), backend=args.backend,
                     label_format=args.label_format, device=args.device, sets=args.sets, unknown=args.unknown,
                     image_col=args.image_col)
    print(f"wrote {result['written']} rows to {result['out']} ({len(result['skipped'])} pictures skipped)")


def _cmd_export(args: argparse.Namespace) -> None:
    from .export import export
    result = export(args.run_dir, args.format, args.out, quantize=args.quantize, cache=_cache_settings(args))
    wrote = (f"{', '.join(result['members'])} and {result['path']} (how to combine them)" if "members" in result
             else f"{result['path']} (+ {result['path']}.json, the preprocessing contract)")
    print(f"wrote {wrote}; max abs difference of the logits against PyTorch: {result['max_abs_diff']:.2e} "
          f"(relative {result['max_rel_diff']:.2e})")
    if "int8" in result:
        q = result["int8"]
        name = q["score"]
        print(f"int8 on {q['validation_pictures']} validation pictures: {name.replace('_', '-')} {q['int8'][name]:.4f} "
              f"(fp32 {q['fp32'][name]:.4f}, {q[name + '_delta_points']:+.2f} points), "
              f"{q['int8']['pictures_per_s']:.0f} pictures/s (fp32 {q['fp32']['pictures_per_s']:.0f})")


def _cmd_explain(args: argparse.Namespace) -> None:
    from .explain import explain
    result = explain(args.run_dir, args.images, args.out, method=args.method, layer=args.layer,
                     class_name=args.class_name, top=args.top, device=args.device)
    print(f"explained {result['explained']} pictures ({', '.join(result['method'])} on "
          f"{', '.join(result['layers'])}) -> {result['out']}/explain.csv, "
          f"{result['out']}/contact.png ({len(result['skipped'])} pictures skipped)")


def _cmd_serve(args: argparse.Namespace) -> None:
    # Before torch loads: its OpenMP threads would otherwise spin after every model call, taking the
    # cores from the decoding threads and the event loop (airnet, 1 client: 102 → 281 requests/s).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .serve import serve
    serve(args.run_dir, args.host, args.port, drain_s=args.drain_s, api_key=args.api_key,
          max_bytes=int(args.max_mb * 2**20), backend=args.backend, device=args.device, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms, max_pending=args.max_pending, max_pixels=int(args.max_pixels * 1e6),
          cors_origins=args.cors_origin, log_format=args.log_format)


def _cmd_runs(args: argparse.Namespace) -> None:
    from .experiments import format_runs, list_runs, plot_runs
    rows = list_runs(args.folder, args.sort)
    print(format_runs(rows) if rows else f"no finished run under {args.folder}")
    if args.plot and rows:
        print(f"curves of {len(rows)} runs -> {plot_runs(rows, args.plot)}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from .runs import next_free
    from .train import train
    out = args.out or str(next_free(Path("runs") / "demo"))
    result = train(source="digits", model="simple-cnn", img_size=16, epochs=args.epochs, out=out)
    print(f"demo: best epoch {result.best_epoch}, val accuracy {result.val_accuracy:.4f}, log loss "
          f"{result.val_log_loss:.4f} in {result.train_seconds:.1f} s\nopen {result.run_dir}/report.html")


# Every command's handler; train alone also takes the command line (it relaunches itself under torchrun).
COMMANDS = {"train": _cmd_train, "tune": _cmd_tune, "lr-find": _cmd_lr_find, "finetune": _cmd_finetune,
            "audit": _cmd_audit, "check": _cmd_check, "evaluate": _cmd_evaluate, "predict": _cmd_predict,
            "export": _cmd_export, "explain": _cmd_explain, "serve": _cmd_serve, "runs": _cmd_runs,
            "cache": _cmd_cache, "models": _cmd_models, "demo": _cmd_demo}


def _run(args: argparse.Namespace, argv: list[str]) -> None:
    handler = COMMANDS[args.command]
    handler(args, argv) if handler is _cmd_train else handler(args)


ENVIRONMENT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def _stop_on_signals():
    """The first SIGTERM/SIGINT stops the command through stopping.Stopped; a second one exits at once
    (what was written is still consistent: every file is replaced atomically). The previous handlers
    come back afterwards (main() also runs inside other programs, tests among them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        if stopping.request(signum):
            os._exit(128 + signum)
        raise stopping.Stopped(signum)

    def unraisable(hook_args):  # a stop swallowed in a callback is raised again at the next check()
        if not isinstance(hook_args.exc_value, stopping.Stopped):
            previous_hook(hook_args)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook
        stopping.reset()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        with _stop_on_signals():
            _run(args, argv)
    except UserError as error:
        print(f"imgcls: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRORS:
            raise
        # A full disk or a read-only folder: the machine's state, said in one line (what was written
        # before it is consistent: every file is replaced atomically).
        print(f"imgcls: error: {error.strerror} while writing {error.filename or 'a file'}; expected free space "
              "and write permission there (or --cache-dir elsewhere, or --no-cache)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stopped:
        signum = getattr(stopped, "signum", signal.SIGINT)
        print(f"imgcls: stopped by {signal.Signals(signum).name} (a training run can be finished with "
              "imgcls train --resume RUN_DIR; an audit or tune resumes when run again)", file=sys.stderr)
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
