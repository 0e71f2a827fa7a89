"""What a server is started with, checked before anything loads, and the engine those settings build."""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 2**30


@dataclass
class ServeSettings:
    """The options of `latentloop serve` (see `cli/serve.py` for what each one means)."""

    model: str = "default"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_num_steps: int = 128
    kv_budget: int | None = None
    max_cache_gb: float | None = None
    max_length: int | None = None
    max_queue: int = 256
    api_key: str | None = None
    compile: bool = False
    served_name: str | None = None
    prefill_chunk: int | None = 256
    grace_seconds: float = 10.0
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_batch", "max_num_steps"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("kv_budget", "max_length", "prefill_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1 (or left out), got {value}")
        if self.max_queue < 0:
            problems.append(f"--max-queue must be >= 0 (requests waiting for a free row), got {self.max_queue}")
        if self.max_cache_gb is not None and not (math.isfinite(self.max_cache_gb) and self.max_cache_gb > 0):
            problems.append(f"--max-cache-gb must be a positive number of GiB, got {self.max_cache_gb}")
        if not (math.isfinite(self.grace_seconds) and self.grace_seconds >= 0):
            problems.append(f"--grace-seconds must be a number >= 0, got {self.grace_seconds}")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must lie in [0, 65535], got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            problems.append("--api-key is empty; give a key or leave the option out")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def name(self) -> str:
        """The model name clients send (`model` in a request body)."""
        return self.served_name or self.model


def build_scheduler(model, settings: ServeSettings):
    """The engine and its cache: `max_batch` rows (fewer when `max_cache_gb` holds fewer) of
    `max_length` positions (default: the model's context), each token up to `max_num_steps` deep."""
    from ..cache import KVCache
    from ..engine import Engine, Scheduler

    config = model.config
    length = min(settings.max_length or config.context_length, config.context_length)
    if settings.max_cache_gb is None:
        cache = KVCache(config, settings.max_batch, length, settings.max_num_steps, settings.kv_budget,
                        model.dtype, model.device)
    else:
        cache = KVCache.for_memory(config, int(settings.max_cache_gb * GIB), length, settings.max_num_steps,
                                   settings.kv_budget, model.dtype, model.device, max_rows=settings.max_batch)
    return Scheduler(Engine(model, cache, compile=settings.compile), prefill_chunk=settings.prefill_chunk)
