"""Choosing the next token from logits: greedy or sampled with temperature, top-k, top-p and min-p,
after an optional repetition penalty. Works on a whole batch at once; no Python loop over rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sampler:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0 (got {self.temperature}); use do_sample=False for greedy")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"top_k must be >= 1 (got {self.top_k})")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            problems.append(f"min_p must be in [0, 1] (got {self.min_p})")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty must be > 0 (got {self.repetition_penalty}); 1.0 disables it")
        if problems:
            raise ValueError("; ".join(problems))

    def penalize(self, logits: Tensor, seen: Tensor | None) -> Tensor:
        """Make tokens already in the row less likely: positive logits divided, negative multiplied."""
        if self.repetition_penalty == 1.0 or seen is None:
            return logits
        penalized = torch.where(logits > 0, logits / self.repetition_penalty, logits * self.repetition_penalty)
        return torch.where(seen, penalized, logits)

    def filter(self, logits: Tensor) -> Tensor:
        """Temperature, then top-k, top-p and min-p masks (-inf outside)."""
        logits = logits / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            outside = probs.cumsum(-1) - probs >= self.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
        if self.min_p:
            probs = logits.softmax(-1)
            logits = logits.masked_fill(probs < self.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
        return logits

    def __call__(self, logits: Tensor, seen: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """logits [B, V] -> next ids [B]."""
        logits = self.penalize(logits, seen)
        if not self.do_sample:
            return logits.argmax(-1)
        probs = self.filter(logits).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
