"""A deployment's test-time compute on vLLM: depth, KV budget and initial state, read from the model config.

vLLM runs one fixed depth per deployment; these keys of `config.json` (or of `--hf-overrides`) set it:

- `num_steps`: core iterations per token (default: the model's `mean_recurrence`);
- `kv_budget`: K/V slots per core layer, a ring that iteration i reads and writes at slot i mod k
  (default: one slot per iteration, which is exact);
- `initial_state`: `"zeros"` (default: deterministic, what `latentloop.generate(..., init_scale=0)` does)
  or `"random"` (huginn's truncated-normal noise, scaled by `init_scale`, drawn afresh for every forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INITIAL_STATES = ("zeros", "random")


@dataclass(frozen=True)
class DepthSettings:
    num_steps: int
    kv_budget: int | None
    init_scale: float  # 0: the zero initial state

    @property
    def core_slots(self) -> int:
        """K/V slots each core layer holds: one per iteration, or the budget's ring."""
        return self.kv_budget or self.num_steps

    @classmethod
    def from_config(cls, config: Any) -> DepthSettings:
        """Read and check the keys; a wrong value is named with the override that fixes it."""
        num_steps = getattr(config, "num_steps", None)
        num_steps = config.mean_recurrence if num_steps is None else num_steps
        if not _is_positive_int(num_steps):
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}; "
                             "pass e.g. --hf-overrides '{\"num_steps\": 32}'")
        kv_budget = getattr(config, "kv_budget", None)
        if kv_budget is not None and not _is_positive_int(kv_budget):
            raise ValueError(f"kv_budget must be a positive integer or null, got {kv_budget!r}; "
                             "pass e.g. --hf-overrides '{\"kv_budget\": 4}'")
        if kv_budget is not None and kv_budget >= num_steps:
            kv_budget = None  # a ring at least as long as the depth is the full cache
        initial_state = getattr(config, "initial_state", "zeros")
        if initial_state not in INITIAL_STATES:
            raise ValueError(f"initial_state must be one of {INITIAL_STATES}, got {initial_state!r}")
        init_scale = getattr(config, "init_scale", 1.0)
        if isinstance(init_scale, bool) or not isinstance(init_scale, int | float) or init_scale < 0:
            raise ValueError(f"init_scale must be a non-negative number, got {init_scale!r}")
        return cls(num_steps, kv_budget, float(init_scale) if initial_state == "random" else 0.0)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
