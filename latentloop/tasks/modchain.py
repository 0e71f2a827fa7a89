"""Chains of operations on one digit, modulo 10, applied left to right.

`4+3*7-2=` means ((4 + 3) * 7 - 2) mod 10 = 7. Multipliers are 3, 7 or 9 (units modulo 10), so every
operation changes the result and none can be skipped: the answer depends on the whole chain, in
order, and no fixed number of layers can shortcut a long one. A problem holds `chains` independent
chains separated by commas and the answer lists their results in order (`4+3*7-2,8*3=74`): the first
result comes from the prompt's last position, the others are read back while decoding.
Difficulty is the number of operations per chain; the harder split has longer chains than training.
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
                 chains: int = 2, partial_labels: bool = False) -> None:
        if train_ops[0] < 1:
            raise ValueError(f"a chain needs at least one operation, got train_ops {train_ops}")
        if chains < 1:
            raise ValueError(f"chains must be >= 1, got {chains}")
        super().__init__(tuple(train_ops), tuple(test_ops), partial_labels)
        self.chains = chains

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

    def sample(self, rng: np.random.Generator, difficulty: int) -> Problem:
        texts, partials, results = [], [], []
        for _ in range(self.chains):
            text, part, value = self.chain(rng, difficulty)
            texts.append(text)
            partials += [*part, ""]  # the separator after each chain (',' or '=') closes nothing new
            results.append(str(value))
        return Problem(",".join(texts) + "=", "".join(results), difficulty, tuple(partials))
