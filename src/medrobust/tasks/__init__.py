"""The task registry: classification, segmentation, landmarks and detection, one ``Task`` each.

Commands and campaigns ask the task (``get_task(name)`` or ``task_of(model)``) how to train,
score and attack a model instead of branching on its kind.
"""

from __future__ import annotations

from medrobust.errors import ConfigError
from medrobust.models.base import PixelModel
from medrobust.tasks.base import AttackGoals, Certification, CurveMetric, Task, TaskReport
from medrobust.tasks.classification import TASK as CLASSIFICATION
from medrobust.tasks.detection import TASK as DETECTION
from medrobust.tasks.landmarks import TASK as LANDMARKS
from medrobust.tasks.segmentation import TASK as SEGMENTATION

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, SEGMENTATION, LANDMARKS, DETECTION)}
#: the task of runs and checkpoints that record none (written before tasks were recorded)
DEFAULT_TASK = CLASSIFICATION.name


def register_task(task: Task) -> Task:
    """Add a task to the registry (a new kind of model): every command, campaign and report
    section that asks the registry then serves it. Refuses a name already taken."""
    if task.name in TASKS:
        raise ConfigError(f"a task named {task.name!r} is already registered")
    if task.load is None:
        raise ConfigError(f"task {task.name!r} needs a checkpoint loader (Task.load)")
    from medrobust.models.loading import register_loader

    TASKS[task.name] = task
    register_loader(task.name, task.load)
    return task


def unregister_task(name: str) -> None:
    """Remove a task added by ``register_task`` (tests; a plugin being unloaded)."""
    from medrobust.models.loading import LOADERS

    TASKS.pop(name, None)
    LOADERS.pop(name, None)


def ordered_tasks() -> list[Task]:
    """The registered tasks in the order reports show them."""
    return sorted(TASKS.values(), key=lambda t: (t.report.order, t.name))


def task_report(name: str) -> TaskReport | None:
    """How reports show task ``name`` (None: a task this version does not know)."""
    task = TASKS.get(name)
    return None if task is None else task.report


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: choose from {', '.join(TASKS)}")
    return TASKS[name]


def task_of(model: PixelModel) -> Task:
    return get_task(model.task)


__all__ = ["DEFAULT_TASK", "TASKS", "AttackGoals", "Certification", "CurveMetric", "Task",
           "TaskReport", "get_task", "ordered_tasks", "register_task", "task_of", "task_report",
           "unregister_task"]
