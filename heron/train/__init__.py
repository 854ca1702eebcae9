"""Training: ``heron train`` (docs/training.md).

``train(config, resume=None)`` runs a :class:`TrainConfig`; tasks live in a registry
(:func:`get_task`, :func:`register_task`) that maps a name to its data, model and metric.
"""

from heron.train.config import TrainConfig
from heron.train.tasks import Curriculum, Task, TaskSetup, get_task, register_task, task_names
from heron.train.trainer import TrainResult, build_optimizer, train

__all__ = ["TrainConfig", "train", "TrainResult", "build_optimizer", "Task", "TaskSetup", "Curriculum",
           "get_task", "register_task", "task_names"]
