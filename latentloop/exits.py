"""Per-token early exit: stop iterating a token once its prediction (or latent) stops changing.

A criterion compares iteration t with t-1 at the current position and says, per batch row, whether
the row has converged. `begin(x0, vocab_size)` returns the update function for one token; the decode
loop calls it after every iteration with the state and (when `needs_logits`) the logits. Iteration 0 is
the initial state: a uniform distribution for `kl` and `entropy`, the initial latent for `latent-diff`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

Update = Callable[[Tensor, Tensor | None], Tensor]  # (state [B,1,h], logits [B,1,V] | None) -> [B] bool


class ExitCriterion(ABC):
    """Base: thresholds plus the iteration window [min_steps, max_steps] (max None = the run's num_steps)."""

    name = ""
    needs_logits = True
    default_threshold = 0.0

    def __init__(self, threshold: float | None = None, min_steps: int = 1, max_steps: int | None = None) -> None:
        self.threshold = self.default_threshold if threshold is None else threshold
        if not self.threshold > 0:
            raise ValueError(f"{self.name} exit threshold must be positive, got {self.threshold}")
        if min_steps < 1 or (max_steps is not None and max_steps < min_steps):
            raise ValueError(f"need 1 <= min_steps <= max_steps; got min_steps={min_steps}, max_steps={max_steps}")
        self.min_steps, self.max_steps = min_steps, max_steps

    @abstractmethod
    def begin(self, x0: Tensor, vocab_size: int) -> Update: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threshold:g}, min_steps={self.min_steps}, max_steps={self.max_steps})"


class KL(ExitCriterion):
    """KL(p_{t-1} || p_t) below the threshold (the paper's 5e-4); p_0 is uniform."""

    name, default_threshold = "kl", 5e-4

    def begin(self, x0: Tensor, vocab_size: int) -> Update:
        previous: Tensor | None = None

        def update(x: Tensor, logits: Tensor | None) -> Tensor:
            nonlocal previous
            logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
            if previous is None:  # KL(uniform || p) = -log V - mean(log p)
                divergence = -math.log(vocab_size) - logp.mean(-1)
            else:
                divergence = (previous.exp() * (previous - logp)).sum(-1)
            previous = logp
            return divergence < self.threshold

        return update


class Entropy(ExitCriterion):
    """|H_t - H_{t-1}| below the threshold; H_0 = log V (uniform)."""

    name, default_threshold = "entropy", 1e-3

    def begin(self, x0: Tensor, vocab_size: int) -> Update:
        previous = torch.full((x0.shape[0],), math.log(vocab_size), device=x0.device)

        def update(x: Tensor, logits: Tensor | None) -> Tensor:
            nonlocal previous
            logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
            converged = (entropy - previous).abs() < self.threshold
            previous = entropy
            return converged

        return update


class LatentDiff(ExitCriterion):
    """Relative state change ||x_t - x_{t-1}|| / ||x_t|| below the threshold; needs no logits."""

    name, default_threshold, needs_logits = "latent-diff", 0.03, False

    def begin(self, x0: Tensor, vocab_size: int) -> Update:
        previous = x0

        def update(x: Tensor, logits: Tensor | None) -> Tensor:
            nonlocal previous
            current = x[:, -1].float()
            change = (current - previous[:, -1].float()).norm(dim=-1) / current.norm(dim=-1).clamp(min=1e-12)
            previous = x
            return change < self.threshold

        return update


class ArgmaxStability(ExitCriterion):
    """The top token unchanged for `threshold` consecutive iterations (default 5)."""

    name, default_threshold = "argmax-stability", 5

    def __init__(self, threshold: float | None = None, min_steps: int = 1, max_steps: int | None = None) -> None:
        super().__init__(threshold, min_steps, max_steps)
        if self.threshold != int(self.threshold):
            raise ValueError(f"argmax-stability counts iterations; its threshold must be an integer, got {threshold}")

    def begin(self, x0: Tensor, vocab_size: int) -> Update:
        previous: Tensor | None = None
        streak = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)

        def update(x: Tensor, logits: Tensor | None) -> Tensor:
            nonlocal previous, streak
            top = logits[:, -1].argmax(-1)
            streak = (streak + 1) * (top == previous) if previous is not None else streak
            previous = top
            return streak >= self.threshold

        return update


CRITERIA: dict[str, type[ExitCriterion]] = {c.name: c for c in (KL, Entropy, LatentDiff, ArgmaxStability)}


def parse_exit(
    spec: str | ExitCriterion | None, min_steps: int = 1, max_steps: int | None = None
) -> ExitCriterion | None:
    """'kl', 'kl:5e-4', 'entropy:1e-3', 'latent-diff:0.03', 'argmax-stability:5'; None/'none' = fixed depth."""
    if spec is None or isinstance(spec, ExitCriterion):
        return spec
    name, _, value = spec.strip().lower().partition(":")
    if name in ("", "none", "fixed"):
        return None
    if name not in CRITERIA:
        raise ValueError(f"unknown exit criterion {spec!r}; choose one of {sorted(CRITERIA)} (e.g. 'kl:5e-4')")
    try:
        threshold = float(value) if value else None
    except ValueError:
        raise ValueError(f"exit threshold in {spec!r} is not a number (write e.g. '{name}:0.001')") from None
    return CRITERIA[name](threshold, min_steps=min_steps, max_steps=max_steps)
