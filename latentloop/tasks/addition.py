"""Addition with long carry chains, answer most-significant digit first.

`a+b=` with both operands `digits` wide (zero-padded); the answer is the `digits + 1`-digit sum.
Written most-significant digit first, each answer digit needs the carry that arrives from below,
and a carry crosses every column whose digits sum to 9: difficulty is the length of the longest
such run that a carry has to cross. Every other column is drawn with a digit sum other than 9, so
the planted run is the only long chain; the harder split plants longer runs than training saw.
"""

from __future__ import annotations

import numpy as np

from .base import Problem, ReasoningTask

PAIRS = [(a, b) for a in range(10) for b in range(10)]
GENERATE = [p for p in PAIRS if sum(p) >= 10]  # column that starts a carry
PROPAGATE = [p for p in PAIRS if sum(p) == 9]  # column that passes a carry on
OTHER = [p for p in PAIRS if sum(p) != 9]


def pick(rng: np.random.Generator, pairs: list[tuple[int, int]]) -> tuple[int, int]:
    return pairs[int(rng.integers(len(pairs)))]


class Addition(ReasoningTask):
    name = "addition"
    alphabet = "0123456789+="

    def __init__(self, digits: int = 10, train_chain: tuple[int, int] = (0, 5),
                 test_chain: tuple[int, int] = (6, 9)) -> None:
        if digits < 2:
            raise ValueError(f"digits must be >= 2, got {digits}")
        if test_chain[1] > digits - 1:
            raise ValueError(f"a carry chain crosses at most digits - 1 = {digits - 1} columns, "
                             f"got test_chain {test_chain}; raise digits or lower the chain")
        super().__init__(tuple(train_chain), tuple(test_chain))
        self.digits = digits

    def sample(self, rng: np.random.Generator, difficulty: int) -> Problem:
        columns = [pick(rng, OTHER) for _ in range(self.digits)]  # least significant first
        start = int(rng.integers(0, self.digits - difficulty))
        columns[start] = pick(rng, GENERATE)
        for i in range(start + 1, start + 1 + difficulty):
            columns[i] = pick(rng, PROPAGATE)
        a = int("".join(str(c[0]) for c in reversed(columns)))
        b = int("".join(str(c[1]) for c in reversed(columns)))
        w = self.digits
        return Problem(f"{a:0{w}d}+{b:0{w}d}=", f"{a + b:0{w + 1}d}", difficulty)
