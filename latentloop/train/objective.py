"""The randomized-depth objective (spec section 3): sample r per step, backpropagate the last k iterations.

The depth of step `s` depends only on (seed, s): every data-parallel rank and every resumed run
draws the same r without communicating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIGMA = 0.5  # log-normal spread of the Poisson rate


def sample_depth(mean_recurrence: int, seed: int, step: int) -> int:
    """r = Poisson(rate) + 1 with rate ~ LogNormal(ln(mean) - sigma^2/2, sigma): E[rate] = mean."""
    rng = np.random.default_rng([seed, step])
    rate = rng.lognormal(math.log(mean_recurrence) - SIGMA**2 / 2, SIGMA)
    return int(rng.poisson(rate)) + 1


def split_depth(total: int, backprop_depth: int) -> tuple[int, int]:
    """(iterations without gradient, iterations with gradient) = (max(r - k, 0), min(k, r))."""
    return max(total - backprop_depth, 0), min(backprop_depth, total)


@dataclass(frozen=True)
class DepthObjective:
    """How many iterations a training step runs, and through how many of them gradients flow."""

    mean_recurrence: int
    backprop_depth: int
    fixed_depth: int | None = None
    seed: int = 0

    def depth(self, step: int) -> int:
        if self.fixed_depth is not None:
            return self.fixed_depth
        return sample_depth(self.mean_recurrence, self.seed, step)

    def num_steps(self, step: int) -> tuple[int, int]:
        """The model's `num_steps` pair for training step `step`."""
        return split_depth(self.depth(step), self.backprop_depth)
