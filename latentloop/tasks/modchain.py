"""Chains of operations on one digit, modulo 10, applied left to right.

`4+3*7-2=` means ((4 + 3) * 7 - 2) mod 10 = 7. Multipliers are 3, 7 or 9 (units modulo 10), so every
operation changes the result and none can be skipped: the answer depends on the whole chain, in
order, and no fixed number of layers can shortcut a long one. A problem holds `chains` independent
chains separated by commas and the answer lists their results in order (`4+3*7-2,8*3=74`): the first
result comes from the prompt's last position, the others are read back while decoding.
Difficulty is the number of operations per chain; the harder split has longer chains than training.
With `mixed_lengths`, difficulty is the longest chain's length: one chain (at a random place) has
exactly that many operations and the others fewer, and a harder problem keeps the total number of
operations within training's longest prompt. Its one long chain then needs more sequential steps
than any trained chain while every position stays inside the lengths seen in training, so what is
tested is thinking longer (depth), not reading further (unseen positions).
Every digit of a chain closes a shorter problem (the value so far): `partial_labels` supervises
those values at their positions as well, which teaches the step-by-step computation without
writing any step into the text.
"""

from __future__ import annotations

import numpy as np

from .base import Problem, ReasoningTask

MULTIPLIERS = (3, 7, 9)


def apply(value: int, op: str, operand: int) -> int:
    if op == "+":
        return (value + operand) % 10
    if op == "-":
        return (value - operand) % 10
    return (value * operand) % 10


class ModChain(ReasoningTask):
    name = "modchain"
    alphabet = "0123456789+-*,="

    def __init__(self, train_ops: tuple[int, int] = (1, 12), test_ops: tuple[int, int] = (16, 28),
                 chains: int = 2, partial_labels: bool = False, mixed_lengths: bool = False) -> None:
        if train_ops[0] < 1:
            raise ValueError(f"a chain needs at least one operation, got train_ops {train_ops}")
        if chains < 1:
            raise ValueError(f"chains must be >= 1, got {chains}")
        super().__init__(tuple(train_ops), tuple(test_ops), partial_labels)
        self.chains = chains
        self.mixed_lengths = mixed_lengths
        self.total_ops = chains * train_ops[1]  # the longest training prompt, in operations
        spare = self.total_ops - test_ops[1]
        if mixed_lengths and chains > 1 and spare < (chains - 1) * train_ops[0]:
            raise ValueError(
                f"test_ops {test_ops} leave {spare} operations for the other {chains - 1} chain(s) within the "
                f"training length ({chains} x {train_ops[1]}); lower test_ops[1] to at most "
                f"{self.total_ops - (chains - 1) * train_ops[0]}"
            )

    def chain(self, rng: np.random.Generator, ops: int) -> tuple[str, list[str], int]:
        """One chain: its text, the value so far at each character ('' on operators), its result."""
        value = int(rng.integers(10))
        text, partials = [str(value)], [str(value)]
        for _ in range(ops):
            op = "+-*"[int(rng.integers(3))]
            operand = MULTIPLIERS[int(rng.integers(3))] if op == "*" else int(rng.integers(1, 10))
            value = apply(value, op, operand)
            text += [op, str(operand)]
            partials += ["", str(value)]
        return "".join(text), partials, value

    def chain_lengths(self, rng: np.random.Generator, difficulty: int) -> list[int]:
        """Operations per chain: all `difficulty`, or with `mixed_lengths` one chain of `difficulty`
        and shorter others that keep the total within the longest training prompt."""
        if not self.mixed_lengths:
            return [difficulty] * self.chains
        lo = self.train_difficulty[0]
        lengths = [difficulty]
        for left in range(self.chains - 1, 0, -1):
            room = self.total_ops - sum(lengths) - (left - 1) * lo  # keep lo for each chain still to draw
            lengths.append(int(rng.integers(lo, min(difficulty, room) + 1)))
        return [lengths[i] for i in rng.permutation(self.chains)]

    def sample(self, rng: np.random.Generator, difficulty: int) -> Problem:
        texts, partials, results = [], [], []
        for ops in self.chain_lengths(rng, difficulty):
            text, part, value = self.chain(rng, ops)
            texts.append(text)
            partials += [*part, ""]  # the separator after each chain (',' or '=') closes nothing new
            results.append(str(value))
        return Problem(",".join(texts) + "=", "".join(results), difficulty, tuple(partials))
