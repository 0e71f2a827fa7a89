"""Evaluating a circuit of additions modulo 10 whose gates read earlier items by their distance.

A prompt is a row of two-character items. `0d` is an input of value d; a gate `xy` (x, y in 1-8) is
the sum, modulo 10, of the items x and y places before it. The answer is the value of the last item:

    0703120=0      inputs 7 and 3; gate `12` = 3 + 7 = 0; the last item is that gate

`modulus` sets the values' range: sums modulo 3 combine two inputs in 9 ways instead of 100, and
still no gate is settled by one input alone (as a 0 settles an AND), which would let an evaluation
finish before it has gone through every level. Moduli with a factor 2 leave the answers lopsided
(modulo 2: 65-70 % zeros), since a gate's two inputs often share ancestors whose contributions cancel.

`fan_in=1` makes every gate a copy, written `xx`: the item x places back, unchanged. The answer is
then the input at the root of a chain of pointers, and one iteration can follow one pointer of it by
repeating the same lookup, whatever value it carries.

Difficulty is the depth of the last gate: the longest path of gates from an input to it. Each gate
reads two others, so its value cannot be rewritten as one composed map of a single earlier value (as
a chain of operations can, which a network then evaluates in logarithmic depth): the work is level
after level. A core of one layer moves information one gate per iteration (one attention hop), so a
circuit of depth d needs about d iterations, whatever its layout.

Every problem has the same number of items, shallow or deep: a gate's depth grows steadily along
the row, levels packed as tightly as the depth asks. The harder split holds deeper circuits than
any trained one, at the very positions training saw: what it tests is thinking longer, not reading
further. With `partial_labels`, every item's value is also supervised at its second character and a
gate's first input at its first (nothing added to the text). A sum modulo 10 says nothing about one
input until the other is known, so without the first-input label no single lookup pays off and
training stalls at chance; with it, each lookup is learned on its own, shallow gates first.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Problem, ReasoningTask

MAX_OFFSET = 8  # a gate reads items 1-8 places back: one digit each


class Circuit(ReasoningTask):
    name = "circuit"
    alphabet = "0123456789="

    def __init__(self, inputs: int = 4, gates: int = 44, train_depth: tuple[int, int] = (7, 14),
                 test_depth: tuple[int, int] = (33, 44), partial_labels: bool = False, modulus: int = 10,
                 fan_in: int = 2) -> None:
        if fan_in not in (1, 2):
            raise ValueError(f"fan_in must be 1 (copies) or 2 (sums), got {fan_in}")
        if not 2 <= modulus <= 10:
            raise ValueError(f"modulus must be 2-10 (values are written as one digit), got {modulus}")
        if inputs < 2:
            raise ValueError(f"a gate reads two earlier items: inputs must be >= 2, got {inputs}")
        shallowest = math.ceil(gates / (MAX_OFFSET - 1))  # wider levels would put a gate's two inputs out of reach
        for label, (lo, hi) in (("train_depth", train_depth), ("test_depth", test_depth)):
            if lo < shallowest or hi > gates:
                raise ValueError(f"{label} ({lo}, {hi}) must lie within {shallowest}-{gates} for {gates} gates (a "
                                 f"gate reads at most {MAX_OFFSET} items back; a path has at most one gate per item)")
        super().__init__(tuple(train_depth), tuple(test_depth), partial_labels)
        self.inputs, self.gates, self.modulus, self.fan_in = inputs, gates, modulus, fan_in

    def levels(self, prompt: str) -> list[int | None]:
        """A gate's level at its second character (its value's label); None at the first (whose label,
        the first input's value, belongs to the level below)."""
        depths: list[int] = []
        for i in range(0, len(prompt) - 1, 2):
            x, y = int(prompt[i]), int(prompt[i + 1])
            here = len(depths)
            depths.append(0 if x == 0 else 1 + max(depths[here - x], depths[here - y]))
        return [*(level for depth in depths for level in (None, depth)), None]

    def sample(self, rng: np.random.Generator, difficulty: int) -> Problem:
        values = [int(v) for v in rng.integers(self.modulus, size=self.inputs)]
        depths = [0] * self.inputs
        text = [f"0{v}" for v in values]
        partials = [part for v in values for part in ("", str(v))]
        for g in range(1, self.gates + 1):
            level = math.ceil(g * difficulty / self.gates)  # 1, ..., difficulty: rises by at most one per gate
            here = len(values)
            back = range(1, min(MAX_OFFSET, here) + 1)
            feeds = [d for d in back if depths[here - d] == level - 1]  # one input from the level below ...
            x = feeds[int(rng.integers(len(feeds)))]
            if self.fan_in == 1:
                values.append(values[here - x])
                y = x
            else:  # ... the other from any level below
                others = [d for d in back if depths[here - d] <= level - 1 and d != x]
                y = others[int(rng.integers(len(others)))]
                if rng.integers(2):
                    x, y = y, x
                values.append((values[here - x] + values[here - y]) % self.modulus)
            depths.append(level)
            text.append(f"{x}{y}")
            partials += [str(values[here - x]), str(values[-1])]
        return Problem("".join(text) + "=", str(values[-1]), difficulty, (*partials, ""))
