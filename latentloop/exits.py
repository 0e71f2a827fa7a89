"""Per-token early exit: stop iterating a token once its prediction (or latent) stops changing.

A criterion compares iteration t with t-1 at the current position and says, per row, whether the row has
converged. Its running comparison is a `State`: tensors whose first dimension is the row, so that the rows of
a batch that share a kind of criterion are compared by one set of ops, whatever their thresholds and
whatever the iteration each is at (`Watch`), and their verdicts are read back once per iteration, not once
per row (on a GPU, each read is a synchronization). Iteration 0 is the initial state: a uniform
distribution for `kl` and `entropy`, the initial latent for `latent-diff`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

State = tuple[Tensor, ...]  # a criterion's running comparison, one row per batch row


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

    @classmethod
    @abstractmethod
    def start(cls, x0: Tensor, vocab_size: int) -> State:
        """The comparison before the first iteration, for rows with initial state x0 [B, 1, h]."""

    @classmethod
    @abstractmethod
    def compare(cls, state: State, x: Tensor, logits: Tensor | None, threshold: Tensor,
                vocab_size: int) -> tuple[Tensor, State]:
        """After an iteration: which rows converged ([B] bool; `threshold` [B] is each row's) and the new state.
        x [B, 1, h] is the state after the iteration, logits [B, 1, V] its decoding (when `needs_logits`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threshold:g}, min_steps={self.min_steps}, max_steps={self.max_steps})"


class KL(ExitCriterion):
    """KL(p_{t-1} || p_t) below the threshold (the paper's 5e-4); p_0 is uniform."""

    name, default_threshold = "kl", 5e-4

    @classmethod
    def start(cls, x0: Tensor, vocab_size: int) -> State:
        return (torch.full((x0.shape[0], vocab_size), -math.log(vocab_size), device=x0.device),)  # log p_0

    @classmethod
    def compare(cls, state, x, logits, threshold, vocab_size):
        previous = state[0]
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        divergence = (previous.exp() * (previous - logp)).sum(-1)
        return divergence < threshold, (logp,)


class Entropy(ExitCriterion):
    """|H_t - H_{t-1}| below the threshold; H_0 = log V (uniform)."""

    name, default_threshold = "entropy", 1e-3

    @classmethod
    def start(cls, x0: Tensor, vocab_size: int) -> State:
        return (torch.full((x0.shape[0],), math.log(vocab_size), device=x0.device),)

    @classmethod
    def compare(cls, state, x, logits, threshold, vocab_size):
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return (entropy - state[0]).abs() < threshold, (entropy,)


class LatentDiff(ExitCriterion):
    """Relative state change ||x_t - x_{t-1}|| / ||x_t|| below the threshold; needs no logits."""

    name, default_threshold, needs_logits = "latent-diff", 0.03, False

    @classmethod
    def start(cls, x0: Tensor, vocab_size: int) -> State:
        return (x0[:, -1].float(),)

    @classmethod
    def compare(cls, state, x, logits, threshold, vocab_size):
        current = x[:, -1].float()
        change = (current - state[0]).norm(dim=-1) / current.norm(dim=-1).clamp(min=1e-12)
        return change < threshold, (current,)


class ArgmaxStability(ExitCriterion):
    """The top token unchanged for `threshold` consecutive iterations (default 5)."""

    name, default_threshold = "argmax-stability", 5

    def __init__(self, threshold: float | None = None, min_steps: int = 1, max_steps: int | None = None) -> None:
        super().__init__(threshold, min_steps, max_steps)
        if self.threshold != int(self.threshold):
            raise ValueError(f"argmax-stability counts iterations; its threshold must be an integer, got {threshold}")

    @classmethod
    def start(cls, x0: Tensor, vocab_size: int) -> State:
        rows, device = x0.shape[0], x0.device  # the previous top token (-1: none yet, so no streak) and the streak
        return torch.full((rows,), -1, device=device), torch.zeros(rows, dtype=torch.long, device=device)

    @classmethod
    def compare(cls, state, x, logits, threshold, vocab_size):
        previous, streak = state
        top = logits[:, -1].argmax(-1)
        streak = (streak + 1) * (top == previous)
        return streak >= threshold, (top, streak)


def start_states(criteria: list[ExitCriterion | None], x0: Tensor, vocab_size: int) -> list[State | None]:
    """Each row's comparison before its first iteration (None for a row without a criterion): one `start`
    per kind of criterion for all its rows, x0 [B, 1, h] their initial states."""
    states: list[State | None] = [None] * len(criteria)
    for kind, members in _by_kind(criteria).items():
        index = torch.tensor(members, device=x0.device)
        _unstack(kind.start(x0.index_select(0, index), vocab_size), members, states)
    return states


def _unstack(state: State, members: list[int], rows: list[State | None]) -> None:
    """Row n of the stacked `state` becomes rows[members[n]], a state of its own."""
    for n, i in enumerate(members):
        rows[i] = tuple(t[n : n + 1] for t in state)


def _by_kind(criteria: list[ExitCriterion | None]) -> dict[type[ExitCriterion], list[int]]:
    """The positions of the rows of each kind of criterion, kinds in order of first appearance."""
    kinds: dict[type[ExitCriterion], list[int]] = {}
    for i, c in enumerate(criteria):
        if c is not None:
            kinds.setdefault(type(c), []).append(i)
    return kinds


def _rows(t: Tensor | None, index: Tensor | None) -> Tensor | None:
    return t if t is None or index is None else t.index_select(0, index)


CRITERIA: dict[str, type[ExitCriterion]] = {c.name: c for c in (KL, Entropy, LatentDiff, ArgmaxStability)}


class Watch:
    """The running exit comparisons of a fixed set of rows: per kind of criterion, its rows' states stacked,
    compared by one call per iteration. `observe` takes the rows' states (and logits) after an iteration
    and returns which rows converged, read back once."""

    def __init__(self, criteria: list[ExitCriterion], states: list[State], vocab_size: int) -> None:
        self.vocab_size, self.size = vocab_size, len(criteria)
        self.kinds: dict[type[ExitCriterion], tuple[list[int], Tensor, State]] = {}  # members, thresholds
        for kind, members in _by_kind(criteria).items():
            device = states[members[0]][0].device
            thresholds = torch.tensor([criteria[i].threshold for i in members], dtype=torch.float32, device=device)
            stacked = tuple(torch.cat(parts) for parts in zip(*(states[i] for i in members), strict=True))
            self.kinds[kind] = (members, thresholds, stacked)

    def observe(self, x: Tensor, logits: Tensor | None) -> list[bool]:
        """x [B, 1, h] and logits [B, 1, V] of the watched rows, in order -> whether each converged."""
        order, parts = [], []
        for kind, (members, thresholds, state) in self.kinds.items():
            index = None if len(members) == self.size else torch.tensor(members, device=x.device)
            converged, state = kind.compare(state, _rows(x, index), _rows(logits, index), thresholds, self.vocab_size)
            self.kinds[kind] = (members, thresholds, state)
            order += members
            parts.append(converged)
        flags = (parts[0] if len(parts) == 1 else torch.cat(parts)).tolist()  # the one read of this iteration
        verdicts = [False] * self.size
        for i, flag in zip(order, flags, strict=True):
            verdicts[i] = flag
        return verdicts

    def keep(self, positions: list[int]) -> None:
        """Only the rows at `positions` (in order) are watched from now on."""
        where = {p: n for n, p in enumerate(positions)}
        for kind, (members, thresholds, state) in list(self.kinds.items()):
            kept = [n for n, i in enumerate(members) if i in where]
            if not kept:
                del self.kinds[kind]
                continue
            if len(kept) < len(members):
                index = torch.tensor(kept, device=thresholds.device)
                thresholds, state = thresholds[index], tuple(t[index] for t in state)
            self.kinds[kind] = ([where[members[n]] for n in kept], thresholds, state)
        self.size = len(positions)

    def states(self) -> list[State]:
        """Each row's state, to carry it to a later `Watch` (a row pondering across decode steps)."""
        rows: list[State | None] = [None] * self.size
        for members, _, state in self.kinds.values():
            _unstack(state, members, rows)
        return rows


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
