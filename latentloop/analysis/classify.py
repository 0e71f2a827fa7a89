"""Label a latent trajectory as a fixed point, an orbit or a slider (the paper's three patterns).

The heuristic looks only at the tail of the trajectory (the last `tail_fraction` of iterations,
at least 4 points), where the early transient from the random start is over:

1. step   = mean ||z_t - z_{t-1}|| over the tail / mean ||z_t|| over the tail.
   step < `fixed_max_step` (default 0.01, i.e. the latent still moves by under 1 % of its norm
   per iteration)                                                       -> "fixed point".
2. straightness = ||z_last - z_first|| / sum of the tail's steps (1 for a straight line, near 0
   for motion that comes back on itself).
   straightness >= `slider_min_straightness` (default 0.9)              -> "slider" (drifts one way).
3. otherwise: the latent keeps moving without going anywhere            -> "orbit".

Limits: an orbit whose period is longer than about four times the tail covers under a quarter
turn, whose straightness exceeds 0.9, and is labelled a slider; a slow drift under 1 % per
iteration is labelled a fixed point. Both thresholds are arguments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FIXED_MAX_STEP = 0.01
SLIDER_MIN_STRAIGHTNESS = 0.9
TAIL_FRACTION = 0.5
LABELS = ("fixed point", "orbit", "slider")


@dataclass(frozen=True)
class Classification:
    label: str
    step: float  # mean relative step over the tail
    straightness: float  # net displacement / path length over the tail

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def classify_trajectory(
    trajectory: np.ndarray,
    fixed_max_step: float = FIXED_MAX_STEP,
    slider_min_straightness: float = SLIDER_MIN_STRAIGHTNESS,
    tail_fraction: float = TAIL_FRACTION,
) -> Classification:
    """Classify one token's trajectory [N, h] (N iterations, any dimension h)."""
    z = np.asarray(trajectory, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 4:
        raise ValueError(f"a trajectory must be [iterations >= 4, dim], got shape {z.shape}")
    tail = z[-max(4, int(round(z.shape[0] * tail_fraction))):]
    steps = np.linalg.norm(np.diff(tail, axis=0), axis=-1)
    scale = max(float(np.linalg.norm(tail, axis=-1).mean()), 1e-12)
    step = float(steps.mean()) / scale
    path = float(steps.sum())
    straightness = float(np.linalg.norm(tail[-1] - tail[0])) / path if path > 0 else 0.0
    if step < fixed_max_step:
        label = "fixed point"
    elif straightness >= slider_min_straightness:
        label = "slider"
    else:
        label = "orbit"
    return Classification(label=label, step=step, straightness=straightness)


def classify_tokens(latents: np.ndarray, **thresholds: float) -> list[Classification]:
    """Classify every token of latents [N, S, h]."""
    return [classify_trajectory(latents[:, s], **thresholds) for s in range(latents.shape[1])]
