"""Evaluation across depth: loss/perplexity, local task accuracy, and the lm-evaluation-harness adapter."""

from .perplexity import load_tokens, load_windows, perplexity_at_depths, windows
from .scoring import Score, score_continuations
from .tasks import Task, TaskConfig, load_task, run_choice_task

__all__ = ["Score", "Task", "TaskConfig", "load_task", "load_tokens", "load_windows", "perplexity_at_depths",
           "run_choice_task", "score_continuations", "windows"]
