"""Every closed set of choices a flag or an API argument takes, defined once and torch-free: the command
line's grammar offers them (cli_parser.py) and the modules that act on them check against them."""
from __future__ import annotations

# training (config.py validates them)
SPLITS = ("stratified", "random", "balanced")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULERS = ("none", "plateau", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
AUGMENT_PRESETS = ("none", "light", "standard", "strong")  # data/augment.py
FREEZE = ("none", "backbone")
PRECISIONS = ("auto", "fp32", "bf16")
ORDERS = ("auto", "random", "quasi")  # the training order (data/loader.py)
RESIZES = ("squash", "crop", "pad")  # how a picture becomes a square (data/decode.py)
RESIZE_MODES = ("auto", *RESIZES)  # auto: crop for pretrained weights, else squash
CLASS_WEIGHTS = ("none", "balanced")
TRAIN_SAMPLERS = ("uniform", "balanced")
CHANNELS = (1, 3)
TRACKERS = ("tensorboard", "mlflow")  # tracking.py
OOD_SCORES = ("msp", "energy", "mahalanobis", "knn")  # openset/scores.py
OOD_METHODS = ("auto", *OOD_SCORES, "none")
# the other commands
TUNE_SAMPLERS = ("tpe", "random")  # tune.py: Optuna's samplers
LABEL_FORMATS = ("name", "index")  # submission.py
EXPORT_FORMATS = ("onnx", "torchscript")  # export.py
QUANTIZE = ("int8",)
EXPLAIN_METHODS = ("auto", "gradcam", "gradcam++", "hirescam")  # gradcam.py
RUN_SORTS = ("accuracy", "log_loss", "time", "date", "name")  # experiments.py
CACHE_ACTIONS = ("list", "clear")
KEEP_EPOCHS = ("best-loss", "best-accuracy", "last")  # train --keep (engine/trainer.py)
LOG_FORMATS = ("text", "json")  # serve's access log (serve/telemetry.py)
