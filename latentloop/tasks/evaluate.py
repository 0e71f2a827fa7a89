"""Accuracy of a model on a task across depth: teacher-forced sweeps and real (cached) generation."""

from __future__ import annotations

from collections import defaultdict

import torch

from ..model import RecurrentDepthLM
from .base import Problem, ReasoningTask, exact_match, teacher_forced_correct


@torch.no_grad()
def depth_correct(model: RecurrentDepthLM, task: ReasoningTask, problems: list[Problem],
                  depths: list[int], batch_size: int = 256) -> dict[int, torch.Tensor]:
    """Per problem and depth, whether greedy decoding answers exactly (zero initial state), from one
    pass per batch: greedy decoding is right exactly when every answer position's argmax is right,
    so teacher forcing measures it without a decode loop."""
    parts: dict[int, list[torch.Tensor]] = {depth: [] for depth in depths}
    for start in range(0, len(problems), batch_size):
        ids, labels = task.encode(problems[start : start + batch_size])
        outputs = model.forward_depths(ids.to(model.device), depths, init_scale=0.0)
        for depth, out in outputs.items():
            parts[depth].append(teacher_forced_correct(out.logits, labels.to(model.device)).cpu())
    return {depth: torch.cat(parts[depth]) for depth in depths}


def depth_accuracy(model: RecurrentDepthLM, task: ReasoningTask, problems: list[Problem],
                   depths: list[int], batch_size: int = 256) -> dict[int, float]:
    """Exact-match accuracy at each depth (see `depth_correct`)."""
    correct = depth_correct(model, task, problems, depths, batch_size)
    return {depth: float(hits.float().mean()) for depth, hits in correct.items()}


def generate_answers(model: RecurrentDepthLM, task: ReasoningTask, problems: list[Problem],
                     **options) -> tuple[list[str], list[list[int]]]:
    """Greedy answers and iterations per generated token, prompts batched by length (no padding)."""
    from ..generate import generate

    by_length: dict[int, list[int]] = defaultdict(list)
    for i, problem in enumerate(problems):
        by_length[len(problem.prompt)].append(i)
    answers: list[str] = [""] * len(problems)
    iterations: list[list[int]] = [[] for _ in problems]
    max_new = max(len(p.answer) for p in problems) + 1
    tok = task.tokenizer
    for rows in by_length.values():
        prompt = torch.tensor([task.prompt_ids(problems[i]) for i in rows])
        result = generate(model, prompt.to(model.device), init_scale=0.0, max_new_tokens=max_new,
                          stop_ids=[tok.eos_id], **options)
        for i, tokens, its in zip(rows, result.tokens, result.iterations, strict=True):
            answers[i] = tok.decode([t for t in tokens if t != tok.eos_id])
            iterations[i] = list(its)
    return answers, iterations


def generation_accuracy(model: RecurrentDepthLM, task: ReasoningTask, problems: list[Problem],
                        **options) -> dict[str, float]:
    """Exact-match accuracy of cached greedy generation, and the mean core iterations per new token."""
    answers, iterations = generate_answers(model, task, problems, **options)
    counts = [n for row in iterations for n in row]
    return {"accuracy": sum(exact_match(answers, problems)) / len(problems),
            "mean_iterations": sum(counts) / len(counts)}
