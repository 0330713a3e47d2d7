"""The command line's grammar: every command and flag (argparse). Standard library and yaml only, so
`imgcls --help` and argument mistakes answer without importing torch."""
from __future__ import annotations

import argparse
import os

import yaml

from .artifact import BACKENDS
from .choices import (AUGMENT_PRESETS, CACHE_ACTIONS, CHANNELS, CLASS_WEIGHTS, DEVICES, EXPLAIN_METHODS, EXPORT_FORMATS,
                      FREEZE, KEEP_EPOCHS, LABEL_FORMATS, LOG_FORMATS, OOD_METHODS, OPTIMIZERS, ORDERS, PRECISIONS, QUANTIZE, RESIZE_MODES, RUN_SORTS,
                      SCHEDULERS, SPLITS, TRAIN_SAMPLERS, TUNE_SAMPLERS)
from .config import RECIPES


def _add_data_flags(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """DATA and the layout flags. optional=True (train, tune, audit): DATA may come from --config, and
    the defaults stay out of the namespace so that a config file can set them."""
    p.add_argument("data", metavar="DATA", nargs="?" if optional else None,
                   help="a folder of pictures, or 'digits' (built in)")
    id_col, label_col = ({}, {}) if optional else ({"default": "id"}, {"default": "label"})
    p.add_argument("--labels", metavar="CSV", help="CSV of id,label; pictures are DATA/<id><ext>")
    p.add_argument("--id-col", **id_col, help="id column of --labels (default: id)")
    p.add_argument("--label-col", **label_col, help="label column of --labels (default: label)")
    p.add_argument("--ext", help="picture extension for --labels ids (default: any picture format)")
    p.add_argument("--label-pattern", metavar="REGEX", help="label = first group of REGEX on the file name")
    image_col, label_key = ({}, {}) if optional else ({"default": "image"}, {"default": "label"})
    p.add_argument("--image-col", **image_col, help="parquet / save_to_disk: the picture bytes column (default: image)")
    p.add_argument("--label-key", **label_key, help="WebDataset: the key of a sample's .json holding its label "
                                                     "(default: label)")
    if optional:  # what is learnt; evaluate and predict read it from the run's model card
        p.add_argument("--multi-label", action="store_true", default=argparse.SUPPRESS,
                       help="several labels per picture: the CSV's label cell holds them (e.g. 'car bicycle')")
        p.add_argument("--label-sep", metavar="SEP", default=argparse.SUPPRESS,
                       help="with --multi-label: what separates the labels in a cell (default: a space)")


def _model_arg(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, received {text!r}")
    key, value = text.split("=", 1)
    return key.replace("-", "_"), yaml.safe_load(value)


def _lr(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, received {text!r}") from None


def _coverage(text: str) -> float | None:
    if text.lower() == "none":
        return 0.0  # off (a None flag would read as "not given")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability such as 0.9, or none; got {text!r}") from None


def _batch_ceiling(text: str) -> int | None:
    if text == "auto":
        return None  # chosen by timing batches at start (serve/models.py)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or auto, received {text!r}")
    return value


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _add_train_flags(parser: argparse.ArgumentParser, *, search: bool = False) -> None:
    """DATA and every training flag; unset flags stay out of the namespace (defaults < --config < flags).
    search=True (tune): --sampler is Optuna's there, so the training sampler comes from --config."""
    _add_data_flags(parser, optional=True)
    for flag, kw in [("--val", dict(metavar="DATA2", help="a separate validation folder (same layout flags)")),
                     ("--val-split", dict(type=float, help="validation fraction (default: 0.2)")),
                     ("--split", dict(choices=SPLITS, help="default: stratified")),
                     ("--seed", dict(type=int, help="default: 0")),
                     ("--recipe", dict(choices=("auto", *RECIPES),
                                       help="a named set of defaults that flags override (default: auto = small "
                                       "when no --model is named: airnet, one-cycle AdamW, label smoothing 0.1, "
                                       "batch 64, 6 epochs; cifar10-speed: airbench's GPU recipe)")),
                     ("--model", dict(help="a name from `imgcls models` (default: the recipe's; none: simple-cnn)")),
                     ("--model-arg", dict(type=_model_arg, action="append", metavar="KEY=VALUE",
                                          help="a model argument, e.g. width=4 (repeatable)")),
                     ("--backbones", dict(metavar="A,B", help="with --model fusion: its backbones "
                                          "(default: resnet50,inception_v3)")),
                     ("--pretrained", dict(action="store_true", help="start from ImageNet weights (torchvision's "
                                           "cache under TORCH_HOME; efficientnet_lite0: the offline package)")),
                     ("--weights", dict(metavar="FILE", help="start from a .safetensors file or a state dict")),
                     ("--freeze", dict(choices=FREEZE, help="backbone: train the head only")),
                     ("--unfreeze", dict(type=_names, metavar="B1,B2", help="these blocks train (e.g. layer4); "
                                         "the rest of the backbone is frozen")),
                     ("--unfreeze-last", dict(type=int, metavar="N", help="the last N blocks of each backbone train")),
                     ("--backbone-lr-mult", dict(type=float, metavar="F", help="backbone lr = lr * F (default: 1)")),
                     ("--no-feature-cache", dict(action="store_false", dest="feature_cache",
                                                 help="recompute frozen blocks every epoch (for comparisons)")),
                     ("--img-size", dict(type=int, metavar="N", help="default: the model's input size")),
                     ("--resize", dict(choices=RESIZE_MODES, help="how a picture becomes a square: "
                                       "squash, crop (short side, centre) or pad (long side, letterbox); auto "
                                       "(default): crop for pretrained weights, squash otherwise")),
                     ("--channels", dict(type=int, choices=CHANNELS, help="default: the model's")),
                     ("--epochs", dict(type=int, help="default: 10, or the recipe's")),
                     ("--batch-size", dict(type=int, help="default: 64, or the recipe's")),
                     ("--optimizer", dict(choices=OPTIMIZERS, help="default: adam, or the recipe's")),
                     ("--lr", dict(type=_lr, help="a number, or auto: the learning-rate finder's suggestion "
                                   "(default: 1e-3, sgd: 1e-2, or the recipe's)")),
                     ("--momentum", dict(type=float, help="SGD momentum (default: 0.9)")),
                     ("--nesterov", dict(action=argparse.BooleanOptionalAction, help="SGD's Nesterov momentum")),
                     ("--lookahead", dict(type=int, metavar="K", help="Lookahead: every K steps the weights go back "
                                          "half way to where they were K steps before (default: 0 = off)")),
                     ("--weight-decay", dict(type=float, help="default: 0")),
                     ("--norm-weight-decay", dict(type=float, metavar="F", help="weight decay of norm layers and "
                                                  "biases (default: --weight-decay's; 0: none, as timm does)")),
                     ("--bias-lr-mult", dict(type=float, metavar="F", help="biases and norm layers' weights at lr * F, "
                                             "their decay / F (airbench: 64; default: 1)")),
                     ("--freeze-bn-scale", dict(action=argparse.BooleanOptionalAction, help="BatchNorm scales stay "
                                                "as they start; their biases train (airbench's)")),
                     ("--val-every", dict(type=int, metavar="N", help="validate every N epochs and after the last "
                                          "(default: 1; the best epoch is chosen among those validated)")),
                     ("--scheduler", dict(choices=SCHEDULERS, help="default: none, or the recipe's")),
                     ("--augment", dict(choices=AUGMENT_PRESETS, help="default: none, or the recipe's")),
                     ("--mixup", dict(type=float, metavar="ALPHA", help="MixUp alpha (default: 0 = off)")),
                     ("--cutmix", dict(type=float, metavar="ALPHA", help="CutMix alpha (default: 0 = off)")),
                     ("--label-smoothing", dict(type=float, metavar="F", help="default: 0, or the recipe's")),
                     ("--early-stop", dict(type=int, metavar="N", help="stop after N epochs without a better val loss")),
                     ("--keep", dict(choices=KEEP_EPOCHS, help="the epoch whose weights the run keeps: best-loss (the "
                                     "default: lowest validation loss), best-accuracy or last")),
                     ("--train-batches", dict(type=int, metavar="N", help="only N batches per epoch (smoke runs)")),
                     ("--device", dict(choices=DEVICES, help="default: auto")),
                     ("--precision", dict(choices=PRECISIONS, help="auto: bf16 autocast on CUDA, "
                                          "fp32 elsewhere")),
                     ("--compile", dict(action=argparse.BooleanOptionalAction,
                                        help="torch.compile the model (a GPU gain; cifar10-speed turns it on)")),
                     ("--sync-bn", dict(action="store_true", help="with --nproc/torchrun: BatchNorm statistics "
                                        "over the global batch (as one process computes them)")),
                     ("--no-channels-last", dict(action="store_false", dest="channels_last",
                                                 help="keep NCHW memory layout (for comparisons)")),
                     ("--clean", dict(action="store_true", help="drop unreadable, tiny and cross-label "
                                      "duplicate pictures; trim uniform borders (also when predicting)")),
                     ("--min-pixels", dict(type=int, metavar="N", help="with --clean: smallest picture kept (default: 3600)")),
                     ("--split-file", dict(metavar="CSV", help="reuse a run's split.csv (same validation pictures)")),
                     ("--exclude", dict(metavar="CSV", help="leave out the pictures a suspects.csv flags")),
                     ("--top", dict(type=int, dest="exclude_top", metavar="N",
                                    help="with --exclude: its first N rows instead of the flagged ones")),
                     ("--cache-max-gb", dict(type=float, metavar="GB", help="evict least recently used cache "
                                             "entries beyond this size (default: 20)")),
                     ("--order", dict(choices=ORDERS, help="training order; quasi keeps "
                                      "reads local in a cache file larger than memory (auto: quasi then)")),
                     ("--class-weight", dict(choices=CLASS_WEIGHTS, help="balanced: loss weights "
                                             "inversely proportional to each class's pictures")),
                     ("--ema", dict(type=float, nargs="?", const=0.999, metavar="DECAY", help="evaluate and save an "
                                    "exponential moving average of the weights (default decay 0.999)")),
                     ("--calibrate", dict(action="store_true", help="fit a temperature on the validation "
                                          "split after training; evaluate, predict, export and serve use it")),
                     ("--calibrate-min-errors", dict(type=int, metavar="N", help="with --calibrate: never sharpen "
                                                     "(T < 1) on fewer than N validation errors (default: 30; 0: "
                                                     "always fit)")),
                     ("--threshold", dict(type=float, metavar="P", help="with --multi-label: predict a label when its "
                                          "probability reaches P (default: a threshold per class, best F1 on "
                                          "validation)")),
                     ("--ood", dict(choices=OOD_METHODS, help="the out-of-distribution score fitted after training "
                                    "(predict answers 'unknown' above its threshold); auto: chosen on --outliers, "
                                    "else mahalanobis; none: no score")),
                     ("--reject-rate", dict(type=float, metavar="F", help="share of in-distribution validation "
                                            "pictures answered 'unknown' (default: 0.05)")),
                     ("--outliers", dict(metavar="DIR", help="pictures known to be outside the classes: choose the "
                                         "score and its threshold to separate them (never evaluate on these)")),
                     ("--coverage", dict(type=_coverage, metavar="F|none", help="conformal sets (predict --sets) "
                                         "that hold the true class with probability F (default: 0.9)")),
                     ("--track", dict(type=_names, metavar="tensorboard,mlflow", help="log config, metrics and "
                                      "files to TensorBoard (RUN_DIR/tensorboard) and/or MLflow (./mlruns or "
                                      "$MLFLOW_TRACKING_URI); pip install 'imgcls[track]'")),
                     ("--class-names", dict(metavar="FILE|A,B,...", help="names for the data's labels: a file "
                                            "(one name a line, or label,name rows) or comma-separated names")),
                     ("--config", dict(metavar="YAML", help="settings file; flags override it"))]:
        parser.add_argument(flag, **kw)
    if not search:
        parser.add_argument("--sampler", choices=TRAIN_SAMPLERS, help="balanced: every class drawn "
                            "equally often per epoch (with replacement)")
    _add_cache_flags(parser)


TTA_HELP = ("average over views of each picture: 1 (none), 2 (alone: the picture and its mirror image) or 6 (also "
            "both shifted by a pixel each way, airbench's multi-crop); default: what a finetune folder (each member "
            "of a --models folder) chose on its validation pictures, else 1")
CACHE_DIR_HELP = "decoded cache folder (default: $IMGCLS_CACHE_DIR, $XDG_CACHE_HOME/imgcls or ~/.cache/imgcls)"


def _add_backend_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto (default): onnx where onnxruntime is installed and the model exports, else torch; "
                        "onnx: onnxruntime on RUN_DIR/model.onnx (exported on first use); torch: PyTorch; "
                        "int8: RUN_DIR/model.int8.onnx from `imgcls export --quantize int8`")


def _add_cache_flags(p: argparse.ArgumentParser) -> None:
    """--no-cache and --cache-dir: train, tune, audit, finetune, check, evaluate and predict."""
    p.add_argument("--no-cache", action="store_false", dest="cache", help="decode into this process's memory "
                   "instead of the persistent decoded cache (one-off runs)")
    p.add_argument("--cache-dir", metavar="DIR", help=CACHE_DIR_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="From a folder of pictures to a trained, "
                                     "checked and usable image classifier.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = argparse.SUPPRESS
    t = sub.add_parser("train", help="train a model and write a run folder", argument_default=s)
    _add_train_flags(t)
    t.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<model>, numbered)")
    t.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run; needs no other argument")
    t.add_argument("--folds", type=int, metavar="K", help="K models, each validated on its own fold, kept as a "
                   "K-fold ensemble in --out (predict OUT averages them; folds.json has the out-of-fold score)")
    t.add_argument("--nproc", type=int, metavar="N", help="data-parallel over N processes, started by torchrun "
                   "(gloo on CPU, nccl on GPU); the global batch stays --batch-size")

    f = sub.add_parser("finetune", help="two-stage transfer learning: head on a frozen pretrained backbone, "
                       "then the last blocks at a tenth of the lr", argument_default=s)
    _add_train_flags(f)
    f.add_argument("--stage1-epochs", type=int, default=5, help="head-only epochs (default: 5)")
    f.add_argument("--stage2-epochs", type=int, default=3, help="epochs with the last blocks unfrozen (default: 3)")
    f.add_argument("--drop-implausible", type=int, default=0, metavar="N",
                   help="leave out the N training pictures stage 1 finds least plausible before stage 2")
    f.add_argument("--models", metavar="A,B", help="finetune each of these models on one shared split and keep them "
                   "as an ensemble in --out (ensemble.json): predict, evaluate, export and serve OUT use their mean")
    f.add_argument("--out", metavar="DIR", help="default: runs/finetune-<model> (with --models: "
                   "runs/ensemble-<models>), numbered")

    u = sub.add_parser("tune", help="search training settings with Optuna (resumable)", argument_default=s)
    _add_train_flags(u, search=True)
    u.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (default: 20)")
    u.add_argument("--space", metavar="SPACE.yaml", help="search space (default: see README)")
    u.add_argument("--storage", metavar="URL", help="Optuna storage (default: sqlite:///OUT/study.db)")
    u.add_argument("--study", default="imgcls", help="study name (default: imgcls)")
    u.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds")
    u.add_argument("--sampler", default="tpe", choices=TUNE_SAMPLERS)
    u.add_argument("--out", default="runs/tune", metavar="DIR", help="default: runs/tune (run again to resume)")

    r = sub.add_parser("lr-find", help="the learning-rate range test: plot loss against lr, suggest one",
                       argument_default=s)
    _add_train_flags(r)
    r.add_argument("--steps", type=int, default=200, help="batches, the lr growing from 1e-7 to 10 (default: 200)")
    r.add_argument("--out", metavar="DIR", help="lr_find.png and lr_find.csv go here (default: runs/lr-find, numbered)")

    c = sub.add_parser("check", help="report unreadable, tiny, bordered, duplicate and odd pictures")
    _add_data_flags(c)
    c.add_argument("--val", metavar="DATA2", help="a validation/test folder: duplicates across it are flagged")
    c.add_argument("--min-pixels", type=int, default=3600, metavar="N", help="smaller pictures are 'tiny' (default: 3600)")
    c.add_argument("--out", default="runs/check", metavar="DIR", help="default: runs/check")
    _add_cache_flags(c)

    a = sub.add_parser("audit", help="rank training pictures by how implausible their label is",
                       argument_default=s)
    _add_train_flags(a)
    a.add_argument("--folds", type=int, default=5, help="K-fold models for out-of-fold probabilities (default: 5)")
    a.add_argument("--out", default="runs/audit", metavar="DIR", help="default: runs/audit (a RUN_DIR: itself)")

    e = sub.add_parser("evaluate", help="score a saved run on labelled pictures")
    e.add_argument("run_dir", metavar="RUN_DIR")
    _add_data_flags(e)
    e.add_argument("--out", metavar="JSON", help="write the metrics here")
    e.add_argument("--tta", type=int, nargs="?", const=2, default=None, metavar="VIEWS", help=TTA_HELP)
    e.add_argument("--outliers", metavar="DIR", help="pictures outside the classes (never used to fit anything): how "
                   "well the run's out-of-distribution score separates them (AUROC, FPR at 95 %% TPR)")
    e.add_argument("--device", default="auto", choices=DEVICES)
    _add_backend_flag(e)
    _add_cache_flags(e)

    p = sub.add_parser("predict", help="predict pictures into a CSV (a submission); several runs: their ensemble")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR [RUN_DIR ...] IMAGES",
                   help="one run folder, or several (their probabilities averaged), then a picture or a folder")
    p.add_argument("--out", metavar="FILE.csv", required=True)
    p.add_argument("--proba", metavar="CLASS", nargs="?", const=True,
                   help="write P(CLASS) instead of the class name; alone: a column of probabilities per class")
    p.add_argument("--template", metavar="SAMPLE.csv", help="follow this CSV's ids and column names")
    p.add_argument("--image-col", default="image", help="parquet / save_to_disk: the picture bytes column "
                   "(default: image)")
    p.add_argument("--sets", action="store_true", help="add a column with each picture's conformal set: the classes "
                   "that hold the true one with the run's promised probability (train --coverage)")
    p.add_argument("--unknown", action="store_true",
                   help="answer 'unknown' for a picture the run's out-of-distribution score puts outside the classes "
                        "(with --proba: an ood_score column); without it, the closest class, as competition files want")
    p.add_argument("--label-format", default="name", choices=LABEL_FORMATS,
                   help="name (default) or index: the class's position 0..K-1 (a run with --class-names whose "
                        "submission wants the number)")
    p.add_argument("--tta", type=int, nargs="?", const=2, default=None, metavar="VIEWS", help=TTA_HELP)
    p.add_argument("--device", default="auto", choices=DEVICES)
    _add_backend_flag(p)
    _add_cache_flags(p)

    x = sub.add_parser("export", help="export a run to ONNX (checked with onnxruntime) or TorchScript")
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument("--format", default="onnx", choices=EXPORT_FORMATS)
    x.add_argument("--out", metavar="FILE", help="default: RUN_DIR/model.onnx or RUN_DIR/model.torchscript.pt")
    _add_cache_flags(x)
    x.add_argument("--quantize", choices=QUANTIZE, help="also RUN_DIR/model.int8.onnx: static int8, calibrated "
                   "on the run's validation pictures; prints both models' validation accuracy and speed")

    g = sub.add_parser("explain", help="Grad-CAM heatmaps: where a run looks in each picture")
    g.add_argument("run_dir", metavar="RUN_DIR")
    g.add_argument("images", metavar="PICTURES", help="a picture or a folder of pictures")
    g.add_argument("--out", metavar="DIR", required=True, help="overlays, contact.png and explain.csv go here")
    g.add_argument("--method", default="auto", choices=EXPLAIN_METHODS,
                   help="auto (default): gradcam for backbones that average-pool their last block, hirescam "
                        "for heads that see each position (flatten, max pool)")
    g.add_argument("--layer", metavar="NAME", help="a block name from `imgcls models NAME` (default: the last "
                   "spatial block of each backbone)")
    g.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class (default: the predicted one)")
    g.add_argument("--top", type=int, default=1, metavar="N", help="explain each picture's N most probable classes")
    g.add_argument("--device", default="auto", choices=DEVICES)

    w = sub.add_parser("serve", help="a web page and JSON endpoint to try a run")
    w.add_argument("run_dir", metavar="RUN_DIR")
    w.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    w.add_argument("--port", type=int, default=8000)
    w.add_argument("--max-mb", type=float, default=10.0, help="largest upload accepted (default: 10)")
    _add_backend_flag(w)
    w.add_argument("--device", default="auto", choices=DEVICES)
    w.add_argument("--max-batch", type=_batch_ceiling, default=None, metavar="N|auto",
                   help="pictures of concurrent requests run together, at most N (default: auto, the largest "
                        "batch this machine runs within 20 ms, timed at start; 1: no batching)")
    w.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="how long a request waits for others to join its batch (default: 5)")
    w.add_argument("--max-pending", type=int, default=64, metavar="N",
                   help="pictures waiting at most; beyond, 503 with Retry-After (default: 64)")
    w.add_argument("--max-pixels", type=float, default=40.0, metavar="MP",
                   help="largest picture in megapixels, read from its header before decoding (default: 40)")
    w.add_argument("--api-key", metavar="KEY", default=os.environ.get("IMGCLS_API_KEY") or None,
                   help="require Authorization: Bearer KEY on /predict and /admin (default: $IMGCLS_API_KEY; "
                        "the health probes and /metrics stay open)")
    w.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages from ORIGIN call the server from a browser (repeatable)")
    w.add_argument("--drain-s", type=float, default=10.0, metavar="S",
                   help="on SIGTERM: not ready at once, stop once idle, at most S seconds (default: 10)")
    w.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="the access log, one line per request: text or json (default: text)")

    m = sub.add_parser("models", help="list the models, or summarise one layer by layer")
    m.add_argument("name", nargs="?", metavar="NAME")
    m.add_argument("--img-size", type=int, metavar="N")
    m.add_argument("--channels", type=int, choices=CHANNELS)
    m.add_argument("--classes", type=int, default=10, help="classes for the summary (default: 10)")

    n = sub.add_parser("runs", help="a table of the finished runs under a folder; --plot overlays their curves")
    n.add_argument("folder", nargs="?", default="runs", metavar="DIR", help="default: runs")
    n.add_argument("--sort", default="accuracy", choices=RUN_SORTS,
                   help="default: accuracy (best first)")
    n.add_argument("--plot", metavar="FILE.png", help="also draw every run's validation curves into FILE.png")

    k = sub.add_parser("cache", help="list the decoded cache's entries, or clear them")
    k.add_argument("action", nargs="?", default="list", choices=CACHE_ACTIONS)
    k.add_argument("--older-than", type=float, metavar="DAYS", help="clear: only entries unused for DAYS days")
    k.add_argument("--cache-dir", metavar="DIR", help=CACHE_DIR_HELP)

    d = sub.add_parser("demo", help="train on scikit-learn's bundled digits and write a full run folder")
    d.add_argument("--epochs", type=int, default=10)
    d.add_argument("--out", metavar="RUN_DIR", help="default: runs/demo, numbered")
    return parser


