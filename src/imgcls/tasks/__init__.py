"""What an answer means: each task owns how its labels are encoded, the loss, logits → probabilities,
the decision, the metrics, calibration, and what the export contract says about outputs (fastai's
CategoryBlock / MultiCategoryBlock with their losses' activation and decodes). Outside this package
nothing calls softmax, sigmoid or argmax on logits."""
from __future__ import annotations

from ..errors import UserError
from .multi_label import MultiLabel
from .single_label import SingleLabel

TASKS = {task.name: task for task in (SingleLabel(), MultiLabel())}


def get_task(name: str):
    """The task object named in a model card or a config: single-label or multi-label."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"Received: task {name!r}; expected one of {', '.join(TASKS)}") from None
