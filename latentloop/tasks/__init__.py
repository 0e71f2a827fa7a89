"""Procedurally generated reasoning tasks whose answers need computation in depth, not in tokens.

`get_task(name, **task_args)` builds one; `latentloop train` reads it through
`data.source = "task:NAME"` and `data.task_args`.
"""

from __future__ import annotations

from .addition import Addition
from .base import Problem, ReasoningTask, exact_match, teacher_forced_correct
from .modchain import ModChain

TASKS: dict[str, type[ReasoningTask]] = {"addition": Addition, "modchain": ModChain}


def get_task(name: str, **task_args) -> ReasoningTask:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    try:
        return TASKS[name](**task_args)
    except TypeError as err:
        raise ValueError(f"bad arguments for task {name!r}: {err}") from None


__all__ = ["TASKS", "Addition", "ModChain", "Problem", "ReasoningTask", "exact_match", "get_task",
           "teacher_forced_correct"]
