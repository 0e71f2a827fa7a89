"""What every reasoning task shares: problems, seeded splits that never overlap, batches, exact scoring.

A task draws a problem from a `numpy.random.Generator` at a chosen difficulty. Splits:
- "train" and "validation" draw from the training difficulty range; a problem belongs to one of them
  by a hash of its text, so no validation problem can ever appear in a training batch;
- "test" draws from a harder range than any training problem (disjoint from both by difficulty).
A sequence is `<bos> prompt answer <eos>`; the model reads the prompt and must produce the answer
and the end token directly, with no written-out steps.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ..tokenizer import Tokenizer
from .vocab import char_tokenizer

IGNORE = -100
SPLITS = ("train", "validation", "test")
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}  # offsets: held-out sets never share a stream


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    difficulty: int
    # Optional per-prompt-character targets: the result so far, where the prefix read up to that
    # character is itself a problem ("" elsewhere). Training may supervise them; scoring never does.
    partials: tuple[str, ...] = ()


class ReasoningTask(ABC):
    """Base class: subclasses set `name`, `alphabet`, the difficulty ranges and implement `sample`."""

    name = ""
    alphabet = ""
    holdout_percent = 5  # share of the training distribution reserved for validation

    def __init__(self, train_difficulty: tuple[int, int], test_difficulty: tuple[int, int],
                 partial_labels: bool = False) -> None:
        for label, (lo, hi) in (("train_difficulty", train_difficulty), ("test_difficulty", test_difficulty)):
            if lo > hi:
                raise ValueError(f"{label} ({lo}, {hi}) is empty: give (low, high) with low <= high")
        if test_difficulty[0] <= train_difficulty[1]:
            raise ValueError(
                f"test_difficulty {test_difficulty} must lie above train_difficulty {train_difficulty}: "
                "the test split holds problems harder than any seen in training"
            )
        self.train_difficulty = train_difficulty
        self.test_difficulty = test_difficulty
        self.partial_labels = partial_labels
        self.tokenizer: Tokenizer = char_tokenizer(self.alphabet)

    # --- problems -------------------------------------------------------------------------------
    @abstractmethod
    def sample(self, rng: np.random.Generator, difficulty: int) -> Problem: ...

    def levels(self, prompt: str) -> list[int | None]:
        """Per prompt character, how deep the sub-problem its partial label closes lies (None where
        there is no label): what `benchmarks/levels.py` groups a model's partial answers by."""
        raise NotImplementedError(f"task {self.name!r} does not say how deep its partial problems lie")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def in_validation(self, problem: Problem) -> bool:
        """The fixed hash bucket that reserves a problem for validation (never trained on)."""
        digest = hashlib.blake2b(problem.prompt.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % 100 < self.holdout_percent

    def draw(self, rng: np.random.Generator, split: str) -> Problem:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        lo, hi = self.test_difficulty if split == "test" else self.train_difficulty
        while True:
            problem = self.sample(rng, int(rng.integers(lo, hi + 1)))
            if split == "test" or self.in_validation(problem) == (split == "validation"):
                return problem

    def problems(self, split: str, count: int, seed: int = 0) -> list[Problem]:
        """`count` problems of a split, the same ones for the same seed."""
        rng = np.random.default_rng([seed, SPLIT_SEEDS.get(split, 0)])
        return [self.draw(rng, split) for _ in range(count)]

    # --- tensors --------------------------------------------------------------------------------
    def encode(self, problems: list[Problem], partial_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded `<bos> prompt answer <eos>` ids and shifted labels set only where the next
        token is part of the answer (or the final <eos>); with `partial_labels`, also the result so
        far at each prompt position that closes a sub-problem (dense supervision, no tokens added)."""
        tok = self.tokenizer
        rows = [([tok.bos_id, *tok.encode(p.prompt)], [*tok.encode(p.answer), tok.eos_id]) for p in problems]
        width = max(len(prompt) + len(answer) for prompt, answer in rows)
        ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, (prompt, answer) in enumerate(rows):
            seq = prompt + answer
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(prompt) - 1 : len(seq) - 1] = torch.tensor(answer)
            if partial_labels:
                for j, target in enumerate(problems[i].partials):
                    if target:
                        labels[i, 1 + j] = tok.encode(target)[0]  # prompt char j sits at position 1 + j
        return ids, labels

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch (the interface `latentloop train` reads with data.source = "task:NAME")."""
        return self.encode([self.draw(rng, "train") for _ in range(batch_size)], self.partial_labels)

    def prompt_ids(self, problem: Problem) -> list[int]:
        return [self.tokenizer.bos_id, *self.tokenizer.encode(problem.prompt)]


def exact_match(predicted: list[str], problems: list[Problem]) -> list[bool]:
    """A prediction counts only when it equals the answer character for character."""
    if len(predicted) != len(problems):
        raise ValueError(f"{len(predicted)} predictions for {len(problems)} problems")
    return [guess == p.answer for guess, p in zip(predicted, problems, strict=True)]


def teacher_forced_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: every answer position's argmax equals its label (identical to greedy decoding)."""
    answer = labels != IGNORE
    hit = (logits.argmax(-1) == labels) | ~answer
    return hit.all(-1)
