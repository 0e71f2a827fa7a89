"""A generation request: what one caller asks of the engine, and what it has received so far.

A request carries everything that decides its output (prompt, depth, exit, sampling, seed, stops,
limits) and its own random generator, so its tokens never depend on what else runs in the batch.
`accept` takes new tokens from the engine and applies stop ids, stop strings and `max_new_tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .exits import ExitCriterion, parse_exit
from .sampling import Sampler

if TYPE_CHECKING:
    from .engine import Thought
    from .parallel import Parallel, Wavefront


def check_limits(num_steps: int, max_new_tokens: int) -> None:
    """Depth and length every request (and generate's options, before any request exists) must have."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1 (iterations of the core per token), got {num_steps!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


class Detokenizer:
    """Incremental decoding: text deltas without re-decoding everything, holding back split UTF-8."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def push(self, token: int, final: bool = False) -> str:
        self.ids.append(token)
        return self.flush() if final else self._delta(complete_only=True)

    def flush(self) -> str:
        return self._delta(complete_only=False)

    def _delta(self, complete_only: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) <= len(before) or (complete_only and after.endswith("\ufffd")):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]


@dataclass(eq=False)
class Request:
    """One prompt to continue. `on_tokens(request, tokens)` is called with every batch of new tokens as
    the engine produces them (and once more with [] when the request finishes)."""

    prompt: Sequence[int]
    max_new_tokens: int = 64
    num_steps: int = 32
    exit: str | ExitCriterion | None = None
    sampler: Sampler = field(default_factory=Sampler)
    init_scale: float = 1.0
    seed: int | None = None
    warm_start: bool = False
    stop_ids: Sequence[int] = ()
    stop: Sequence[str] = ()
    draft_steps: int | None = None
    lookahead: int = 4
    prompt_exit: bool = False  # the exit criterion decides the prompt's tokens' depth too (one token a step)
    parallel: Parallel | None = None  # the parallel (diffusion-forcing) sampler's settings; None: one token a step
    tokenizer: object | None = None
    on_tokens: Callable[[Request, list[int]], None] | None = None

    # what the engine fills in
    tokens: list[int] = field(default_factory=list, init=False)
    iterations: list[int] = field(default_factory=list, init=False)
    text: str = field(default="", init=False)
    finish_reason: str | None = field(default=None, init=False)  # "stop", "length" or "cancelled"
    drafted: int = field(default=0, init=False)
    accepted: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.prompt = [int(t) for t in self.prompt]
        if not self.prompt:
            raise ValueError("a prompt is empty (no real tokens); give at least one token")
        check_limits(self.num_steps, self.max_new_tokens)
        self.exit = parse_exit(self.exit)
        if not (self.init_scale >= 0 and math.isfinite(self.init_scale)):
            raise ValueError(f"init_scale must be a finite number >= 0 (0: deterministic), got {self.init_scale}")
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if "" in self.stop:
            raise ValueError('a stop string is empty (it would end every answer at once); drop it or give text')
        if self.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer to read the text; pass tokenizer=... or use stop_ids")
        if self.prompt_exit and self.exit is None:
            raise ValueError("prompt_exit=True applies the exit criterion to the prompt's tokens; give exit=... too")
        self.stop_ids = set(self.stop_ids)
        self.generator: torch.Generator | None = None  # made on the model's device when admitted
        self.detokenizer = Detokenizer(self.tokenizer) if self.tokenizer is not None else None
        self.seen: Tensor | None = None  # [1, V] tokens so far, for the repetition penalty
        self.state: Tensor | None = None  # [1, 1, h] the last token's final state (warm start)
        self.row: int | None = None
        self.thought: Thought | None = None  # the token the engine is pondering for this request
        self.wavefront: Wavefront | None = None  # the parallel sampler's uncommitted positions
        self.prefilled = 0  # prompt tokens in the cache
        self.first_token_time: float | None = None

    @property
    def depth(self) -> int:
        """The most iterations one of this request's tokens may run."""
        return max(self.num_steps, self.exit.max_steps or 0) if self.exit is not None else self.num_steps

    @property
    def positions_needed(self) -> int:
        """Cache positions per row: the prompt, every new token but the last, speculative drafts."""
        extra = 0 if self.draft_steps is None else self.lookahead + 1
        return len(self.prompt) + self.max_new_tokens + extra

    @property
    def pending(self) -> int:
        """The token the next decode step runs: the prompt's last, then each newly chosen one."""
        return self.tokens[-1] if self.tokens else self.prompt[-1]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def accept(self, new: list[int], iterations: list[int]) -> None:
        """Append new tokens until a stop id, a stop string or the token limit ends the request."""
        taken = 0
        for token, count in zip(new, iterations, strict=True):
            taken += 1
            self.tokens.append(token)
            self.iterations.append(count)
            is_stop = token in self.stop_ids
            full = len(self.tokens) >= self.max_new_tokens
            if self.detokenizer is not None:
                delta = self.detokenizer.flush() if is_stop else self.detokenizer.push(token, final=full)
                self.text += delta
                tail = len(self.text) - len(delta)  # only text that this token completed can hold a new match
                hit = [i for s in self.stop if (i := self.text.find(s, max(0, tail - len(s) + 1))) >= 0]
                if hit:
                    self.text = self.text[: min(hit)]
                    is_stop = True
            if is_stop or full:
                self.finish_reason = "stop" if is_stop else "length"
                break
        if self.on_tokens is not None:
            self.on_tokens(self, self.tokens[len(self.tokens) - taken :])
