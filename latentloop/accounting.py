"""Parameter, FLOP and depth accounting, computed on the meta device (no weights allocated)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig
from .model import RecurrentDepthLM

PARTS = ("embedding", "prelude", "adapter", "core", "coda", "final_norm", "head")


@dataclass(frozen=True)
class ParameterBreakdown:
    embedding: int
    prelude: int
    adapter: int
    core: int
    coda: int
    final_norm: int
    head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return sum(getattr(self, p) for p in PARTS)

    def as_dict(self) -> dict[str, int]:
        return {p: getattr(self, p) for p in PARTS} | {"total": self.total}


def _part(name: str) -> str:
    for prefix, part in (
        ("transformer.wte", "embedding"),
        ("transformer.prelude", "prelude"),
        ("transformer.adapter", "adapter"),
        ("transformer.core_block", "core"),
        ("transformer.coda", "coda"),
        ("transformer.ln_f", "final_norm"),
        ("lm_head", "head"),
    ):
        if name.startswith(prefix):
            return part
    raise KeyError(name)


def count_parameters(config: ModelConfig) -> ParameterBreakdown:
    with torch.device("meta"):
        model = RecurrentDepthLM(config)
    counts = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():  # tied weights are listed once, under the embedding
        counts[_part(name)] += p.numel()
    return ParameterBreakdown(**counts)


MATERIALIZED_RULE = (
    "materialized params: the unrolled model, each iteration with its own adapter and core, "
    "total + (r - 1) x (adapter + core).\nFLOPs/token: 2 x the weights a token multiplies with in that "
    "unrolled model (not the embedding lookup; the head even when tied), at zero context."
)


def materialized_parameters(config: ModelConfig, num_steps: int) -> int:
    """Parameters of the equivalent unrolled (non-shared) model, in which every iteration has its own
    copy of what runs per iteration, the adapter and the core: total + (r - 1) x (adapter + core).
    The same rule as `flops_per_token`, which also counts the adapter once per iteration. (The
    huginn paper's "52.6B at r = 32" counts the adapter once: r x core + the rest; with it counted
    per iteration, as here, huginn-0125 at 32 materializes 54.3B.)"""
    counts = count_parameters(config)
    return counts.total + (num_steps - 1) * (counts.adapter + counts.core)


def flops_per_token(config: ModelConfig, num_steps: int, seq_len: int = 0) -> int:
    """Forward FLOPs for one token: 2 x the weights of the unrolled model it passes (prelude, r x
    (adapter + core), coda, and the head even when tied; the embedding is a lookup), plus attention
    over `seq_len` earlier positions (4 x seq_len x h per layer). Norm weights and q/k biases are
    counted as if they were matmul weights (h per norm: under 0.1 % of a block)."""
    counts = count_parameters(config)
    head = config.vocab_size * config.hidden_size
    matmul = counts.prelude + counts.coda + num_steps * (counts.core + counts.adapter) + head
    attention = 4 * seq_len * config.hidden_size * config.effective_depth(num_steps)
    return 2 * matmul + attention


def depth_table(config: ModelConfig, steps: tuple[int, ...] = (1, 4, 8, 16, 32, 64)) -> list[dict[str, int]]:
    return [
        {
            "num_steps": r,
            "materialized_parameters": materialized_parameters(config, r),
            "flops_per_token": flops_per_token(config, r),
            "effective_depth": config.effective_depth(r),
        }
        for r in steps
    ]
