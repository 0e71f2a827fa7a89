"""Procedurally generated reasoning tasks whose answers need computation in depth, not in tokens.

`get_task(name, **task_args)` builds one; `latentloop train` reads it through
`data.source = "task:NAME"` and `data.task_args`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .addition import Addition
from .base import Problem, ReasoningTask, exact_match, teacher_forced_correct
from .circuit import Circuit
from .modchain import ModChain
from .pointers import Pointers

TASKS: dict[str, type[ReasoningTask]] = {"addition": Addition, "circuit": Circuit, "modchain": ModChain,
                                       "pointers": Pointers}


def get_task(name: str, **task_args) -> ReasoningTask:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    try:
        return TASKS[name](**task_args)
    except TypeError as err:
        raise ValueError(f"bad arguments for task {name!r}: {err}") from None


TASK_FILE = "task.json"  # beside a model trained on a task: {"name": ..., "args": {...}}


def task_from_dir(directory: str | Path) -> ReasoningTask:
    """The task a model was trained on, from the task.json beside it (a directory, 'default', a hub id)."""
    from ..checkpoint import resolve_model_dir

    path = resolve_model_dir(directory) / TASK_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {TASK_FILE}: it was not trained on a latentloop task; write one like "
            '{"name": "modchain", "args": {"train_ops": [1, 12]}} beside the weights'
        )
    spec = json.loads(path.read_text())
    return get_task(spec["name"], **spec.get("args", {}))


__all__ = ["TASKS", "TASK_FILE", "Addition", "Circuit", "ModChain", "Pointers", "Problem", "ReasoningTask",
           "exact_match", "get_task", "task_from_dir", "teacher_forced_correct"]
