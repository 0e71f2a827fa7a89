"""Accuracy of a model on a task across depth: teacher-forced sweeps and real (cached) generation."""

from __future__ import annotations

import torch

from ..model import RecurrentDepthLM
from .base import Problem, ReasoningTask, exact_match, teacher_forced_correct


@torch.no_grad()
def depth_correct(model: RecurrentDepthLM, task: ReasoningTask, problems: list[Problem],
                  depths: list[int], batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Per problem and depth, whether greedy decoding answers exactly (zero initial state), from one
    pass per batch: greedy decoding is right exactly when every answer position's argmax is right,
    so teacher forcing measures it without a decode loop. Batches hold problems of similar length,
    so little of the work is padding."""
    parts: dict[int, list[torch.Tensor]] = {depth: [] for depth in depths}
    order = length_order(problems)
    for start in range(0, len(order), batch_size):
        ids, labels = task.encode([problems[i] for i in order[start : start + batch_size]])
        outputs = model.forward_depths(ids.to(model.device), depths, init_scale=0.0)
        for depth, out in outputs.items():
            parts[depth].append(teacher_forced_correct(out.logits, labels.to(model.device)).cpu())
    undo = torch.argsort(torch.tensor(order))  # back to the problems' own order
    return {depth: torch.cat(parts[depth])[undo] for depth in depths}


@torch.no_grad()
def partial_hits(model: RecurrentDepthLM, task: ReasoningTask, problems: list[Problem],
                 depths: list[int]) -> dict[int, torch.Tensor]:
    """Per depth, a [problem, position] mask: the argmax equals the label there, partial labels
    included (zero initial state, one pass). Position 1 + j holds the guess made at prompt character
    j: what a model trained with partial labels believes that sub-problem's answer is."""
    ids, labels = task.encode(problems, partial_labels=True)
    outputs = model.forward_depths(ids.to(model.device), depths, init_scale=0.0)
    return {depth: (out.logits.argmax(-1) == labels.to(model.device)).cpu() for depth, out in outputs.items()}


def length_order(problems: list[Problem]) -> list[int]:
    """Problem indices by length: batches of neighbours carry little padding."""
    return sorted(range(len(problems)), key=lambda i: len(problems[i].prompt) + len(problems[i].answer))


def depth_accuracy(model: RecurrentDepthLM, task: ReasoningTask, problems: list[Problem],
                   depths: list[int], batch_size: int = 64) -> dict[int, float]:
    """Exact-match accuracy at each depth (see `depth_correct`)."""
    correct = depth_correct(model, task, problems, depths, batch_size)
    return {depth: float(hits.float().mean()) for depth, hits in correct.items()}


def generate_answers(model: RecurrentDepthLM, task: ReasoningTask, problems: list[Problem], batch_size: int = 32,
                     **options) -> tuple[list[str], list[list[int]]]:
    """Greedy answers and iterations per generated token. Prompts of similar length go in left-padded
    batches: each row of a padded batch generates exactly what it generates alone."""
    from ..generate import generate

    answers: list[str] = [""] * len(problems)
    iterations: list[list[int]] = [[] for _ in problems]
    max_new = max(len(p.answer) for p in problems) + 1
    tok = task.tokenizer
    order = length_order(problems)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        prompts = [task.prompt_ids(problems[i]) for i in rows]
        result = generate(model, prompts, init_scale=0.0, max_new_tokens=max_new, stop_ids=[tok.eos_id], **options)
        for i, tokens, its in zip(rows, result.tokens, result.iterations, strict=True):
            answers[i] = tok.decode([t for t in tokens if t != tok.eos_id])
            iterations[i] = list(its)
    return answers, iterations


def generation_accuracy(model: RecurrentDepthLM, task: ReasoningTask, problems: list[Problem],
                        **options) -> dict[str, float]:
    """Exact-match accuracy of cached greedy generation; the mean core iterations per new token, and per
    scored token (the answer's, without the stop token: those the accuracy is measured on)."""
    answers, iterations = generate_answers(model, task, problems, **options)
    counts = [n for row in iterations for n in row]
    scored = [n for answer, row in zip(answers, iterations, strict=True)
              for n in row[: len(task.tokenizer.encode(answer))]]
    return {"accuracy": sum(exact_match(answers, problems)) / len(problems),
            "mean_iterations": sum(counts) / len(counts),
            "scored_mean_iterations": sum(scored) / len(scored) if scored else 0.0}
