"""imgcls: from a folder of pictures to a trained, checked and usable image classifier."""
__version__ = "0.1.0"

from .config import DataConfig, TrainConfig, resolve_config  # noqa: E402
from .data.sources import Samples, from_csv, from_filenames, from_folder, load_samples  # noqa: E402
from .errors import UserError  # noqa: E402
from .export import export  # noqa: E402
from .finetune import FinetuneResult, finetune  # noqa: E402
from .models.registry import create_model, get_spec, list_models  # noqa: E402
from .predict import evaluate, load_run, predict, predict_images  # noqa: E402
from .train import RunResult, train  # noqa: E402

__all__ = ["DataConfig", "TrainConfig", "resolve_config", "Samples", "from_csv", "from_filenames", "from_folder",
           "load_samples", "UserError", "export", "FinetuneResult", "finetune", "create_model", "get_spec", "list_models", "evaluate", "load_run",
           "predict", "predict_images", "RunResult", "train", "__version__"]
