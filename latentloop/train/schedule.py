"""Learning-rate schedules as pure functions of the step: nothing to save, nothing to drift on resume."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, kind: str = "constant", warmup_steps: int = 0,
              cooldown_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at 0-based `step`.

    constant: linear warmup, constant, then (if cooldown_steps) linear decay to min_lr_ratio at the end.
    cosine:   linear warmup, then cosine decay from 1 to min_lr_ratio at `total_steps`.
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "constant":
        start = total_steps - cooldown_steps
        if cooldown_steps and step >= start:
            progress = (step - start + 1) / cooldown_steps
            return 1 - (1 - min_lr_ratio) * progress
        return 1.0
    raise ValueError(f"unknown schedule kind {kind!r}; use 'constant' or 'cosine'")
