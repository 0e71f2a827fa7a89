"""Log-likelihood of continuations at several depths, batched, from one pass per batch.

Shared by multiple-choice tasks and the lm-evaluation-harness adapter. Rows of a batch are
right-padded: with causal attention a real position never sees the padding after it, so each
row scores exactly as it would alone, and `model.forward_depths` reads every depth out of one
recurrence instead of re-running the prelude per depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..model import RecurrentDepthLM


@dataclass(frozen=True)
class Score:
    logprob: float  # sum of log p(continuation token | everything before it)
    is_greedy: bool  # every continuation token is the argmax of its distribution
    num_tokens: int


def score_continuations(
    model: RecurrentDepthLM,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    depths: Sequence[int],
    batch_size: int = 8,
    init_scale: float = 0.0,
    progress: bool = False,
) -> dict[int, list[Score]]:
    """Score each (context_ids, continuation_ids) pair at every depth; results keep the input order.

    The context needs at least one token (lm-eval passes a prefix token for empty contexts). When
    context + continuation exceed the model's context length the context is cut from the left.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = model.config.context_length
    rows = []
    for i, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ValueError(f"pair {i}: context and continuation both need at least one token")
        if len(continuation) > limit:
            raise ValueError(
                f"pair {i}: continuation of {len(continuation)} tokens exceeds the context length {limit}"
            )
        tokens = (list(context) + list(continuation))[-(limit + 1):]
        rows.append((i, tokens[:-1], tokens[1:], len(continuation)))
    rows.sort(key=lambda row: -len(row[1]))  # similar lengths share a batch: less padding

    results: dict[int, list[Score | None]] = {d: [None] * len(rows) for d in depths}
    device = model.device
    for start in tqdm(range(0, len(rows), batch_size), desc="scoring", disable=not progress, unit="batch"):
        batch = rows[start:start + batch_size]
        width = len(batch[0][1])
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        for b, (_, inputs, _, _) in enumerate(batch):
            ids[b, : len(inputs)] = torch.tensor(inputs)
        outputs = model.forward_depths(ids.to(device), list(depths), init_scale=init_scale)
        for depth, out in outputs.items():
            for b, (index, inputs, targets, n_cont) in enumerate(batch):
                wanted = torch.tensor(targets[-n_cont:], device=device)
                # normalize only the continuation's rows: [n_cont, V], not the whole [B, S, V]
                rows_lp = torch.log_softmax(out.logits[b, len(inputs) - n_cont:len(inputs)], dim=-1)
                results[depth][index] = Score(
                    logprob=float(rows_lp.gather(-1, wanted[:, None]).sum()),
                    is_greedy=bool((rows_lp.argmax(-1) == wanted).all()),
                    num_tokens=n_cont,
                )
    return results  # type: ignore[return-value]
