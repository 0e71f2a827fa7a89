"""Following a chain of pointers to its root, among other chains woven through the same row.

A prompt is a row of one-character items. A digit is an input holding that value; a letter `a`-`i`
is a pointer to the item 1-9 places back and holds whatever that item holds; a capital `A`-`I` points
the same way and holds that value plus one (mod 10). The answer is the value of the last item:

    7a3b=7      7 is an input; `a` copies it; 3 is an input; `b` copies the `a` two places back
    7A3B=9      `A` holds 7 + 1; `B` holds that plus one

Difficulty is the depth of the last item: the number of pointers followed from it to its root. The
chain it ends is woven through distractor chains (their own roots and lengths), and every pointer of
the row, on any chain, reaches 1 to `reach` places back, so no letter marks the chain that matters
and its root is no fixed input (first, latest): the way to the answer is to follow the pointers.
With `increments` (the chance that a pointer is a capital, on any chain), knowing the root is not
enough either: the answer counts the capitals on the way, so every hop matters (at 0, the rows are
those of the task without capitals, draw for draw). A row holds 2 x depth + 1 to `items` items
(drawn uniformly), so the deep chains of the harder split sit in rows no longer than training's
longest: what is tested is following further, at positions training saw. One hop is one attention
lookup, the same at every step: a recurrent core of one layer can follow one pointer per iteration,
so a chain of depth d needs about d iterations.

With `partial_labels`, every item's value is also supervised at the item (nothing added to the
text): each lookup is then learned on its own, shallow items first.
"""

from __future__ import annotations

import numpy as np

from .base import Problem, ReasoningTask

POINTERS = "abcdefghi"  # `a` points 1 place back, ..., `i` 9 places back
INCREMENTS = POINTERS.upper()  # the same pointers, adding one to the value they copy
RESTART = 0.1  # chance that a distractor item starts a new chain although enough are running


class Pointers(ReasoningTask):
    name = "pointers"
    alphabet = "0123456789" + POINTERS + "=" + INCREMENTS  # capitals last: earlier models keep their ids

    def __init__(self, items: int = 96, train_depth: tuple[int, int] = (8, 16),
                 test_depth: tuple[int, int] = (36, 44), reach: int = 3, distractors: int = 2,
                 increments: float = 0.0, partial_labels: bool = False) -> None:
        if not 0.0 <= increments <= 1.0:
            raise ValueError(f"increments is the chance that a pointer adds one: give 0-1, got {increments}")
        if not 1 <= reach <= len(POINTERS):
            raise ValueError(f"reach must be 1-{len(POINTERS)} (a pointer is one letter), got {reach}")
        if distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {distractors}")
        deepest = max(train_depth[1], test_depth[1])
        if 2 * deepest + 1 > items or deepest * (reach + 1) / 2 >= items:
            raise ValueError(f"a chain of depth {deepest} with gaps of 1-{reach} needs more than {items} items: "
                             f"raise items to at least {max(2 * deepest + 1, deepest * (reach + 1) // 2 + 1)} "
                             "or lower reach")
        super().__init__(tuple(train_depth), tuple(test_depth), partial_labels)
        self.items, self.reach, self.distractors, self.increments = items, reach, distractors, increments

    def levels(self, prompt: str) -> list[int | None]:
        """How many pointers lead from each item to its root (inputs 0), read from the prompt itself."""
        depths: list[int | None] = []
        for char in prompt.rstrip("="):
            depths.append(0 if char.isdigit() else 1 + depths[len(depths) - 1 - POINTERS.index(char.lower())])
        return [*depths, None]

    def main_chain(self, rng: np.random.Generator, depth: int, items: int) -> list[int]:
        """Positions of the chain that ends at the last item, root first: gaps of 1-`reach`,
        drawn alike for every depth (redrawn when the chain would not fit in the row)."""
        while True:
            gaps = rng.integers(1, self.reach + 1, size=depth)
            if gaps.sum() < items:
                break
        last = items - 1
        return [last - int(g) for g in np.concatenate([[0], np.cumsum(gaps[::-1])])][::-1]

    def sample(self, rng: np.random.Generator, difficulty: int) -> Problem:
        items = int(rng.integers(2 * difficulty + 1, self.items + 1))
        chain = self.main_chain(rng, difficulty, items)
        previous = dict(zip(chain[1:], chain[:-1], strict=True))  # each main-chain pointer's target
        text: list[str] = []
        values: list[int] = []
        tails: list[int] = []  # the last item of each distractor chain
        for here in range(items):
            tails = [t for t in tails if here - t <= self.reach]  # chains out of reach have ended
            on_chain = here in previous or here == chain[0]
            target = previous.get(here)
            if not on_chain and tails and rng.random() >= (0.5 if len(tails) < self.distractors else RESTART):
                target = tails.pop(int(rng.integers(len(tails))))
            if target is None:  # a root: the main chain's, or a new distractor chain's
                values.append(int(rng.integers(10)))
                text.append(str(values[-1]))
            else:
                step = int(rng.random() < self.increments) if self.increments else 0
                values.append((values[target] + step) % 10)
                text.append((INCREMENTS if step else POINTERS)[here - target - 1])
            if not on_chain:
                tails.append(here)
        partials = tuple(str(v) for v in values) + ("",)
        return Problem("".join(text) + "=", str(values[-1]), difficulty, partials)
