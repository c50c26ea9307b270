"""The task registry: classification, segmentation, landmarks and detection, one ``Task`` each.

Commands and campaigns ask the task (``get_task(name)`` or ``task_of(model)``) how to train,
score and attack a model instead of branching on its kind.
"""

from __future__ import annotations

from medrobust.errors import ConfigError
from medrobust.models.base import PixelModel
from medrobust.tasks.base import Task
from medrobust.tasks.classification import TASK as CLASSIFICATION
from medrobust.tasks.detection import TASK as DETECTION
from medrobust.tasks.landmarks import TASK as LANDMARKS
from medrobust.tasks.segmentation import TASK as SEGMENTATION

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, SEGMENTATION, LANDMARKS, DETECTION)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: choose from {', '.join(TASKS)}")
    return TASKS[name]


def task_of(model: PixelModel) -> Task:
    return get_task(model.task)


__all__ = ["TASKS", "Task", "get_task", "task_of"]
