"""Self-speculative decoding: the model drafts with few iterations and verifies with many.

Each round drafts `lookahead` tokens one by one at `draft_steps`, rewinds the rows, runs the current
token and the drafts through the model in ONE forward at `num_steps`, and keeps, per row, the longest
prefix of drafts the verifier agrees with plus the verifier's own next token. Greedy output is
therefore the same as plain greedy decoding at `num_steps`; the verify forward processes lookahead + 1
tokens for about the cost of one when decoding is bound by reading the weights.
"""

from __future__ import annotations

import torch

from .cache import KVCache
from .engine import Engine
from .request import Request


def check_speculative(request: Request, cache: KVCache) -> None:
    """Refuse settings under which speculation could not reproduce plain greedy decoding."""
    num_steps, draft_steps, lookahead = request.num_steps, request.draft_steps, request.lookahead
    if not isinstance(draft_steps, int) or not 1 <= draft_steps <= num_steps:
        raise ValueError(f"draft_steps must be between 1 and num_steps={num_steps}, got {draft_steps!r}")
    if not isinstance(lookahead, int) or lookahead < 1:
        raise ValueError(f"lookahead must be >= 1 drafted tokens per round, got {lookahead!r}")
    if cache.core_slots < num_steps:
        raise ValueError("speculative decoding verifies drafts in parallel, which needs every iteration's "
                         "K/V: drop kv_budget (or make it >= num_steps), or drop draft_steps")
    sampler = request.sampler
    if request.exit is not None or request.warm_start or sampler.do_sample or sampler.repetition_penalty != 1.0:
        raise ValueError("speculative decoding (draft_steps) is greedy at a fixed depth: drop exit, "
                         "warm_start, sampling and repetition_penalty, or drop draft_steps")


def speculative_step(engine: Engine, requests: list[Request]) -> list[tuple[list[int], list[int]]]:
    """One round for requests of one (num_steps, draft_steps, lookahead): per request, the accepted
    tokens and the iterations each counts as (the verifier's)."""
    cache, first = engine.cache, requests[0]
    rows = [r.row for r in requests]
    starts = [cache.lengths[row] for row in rows]
    inits = dict(init_scale=[r.init_scale for r in requests], generators=[r.generator for r in requests])
    drafts = [torch.tensor([r.pending for r in requests], device=engine.model.device)]
    for _ in range(first.lookahead):
        out = engine.forward(drafts[-1][:, None], first.draft_steps, rows=rows, provisional=True, **inits)
        drafts.append(out.logits[:, -1].argmax(-1))
    for row, start in zip(rows, starts, strict=True):
        cache.rewind(row, start)
    proposal = torch.stack(drafts, dim=1)  # [B, lookahead + 1]: current token, then the drafts
    verified = engine.forward(proposal, first.num_steps, rows=rows, **inits).logits.argmax(-1)
    agree = (verified[:, :-1] == proposal[:, 1:]).long().cumprod(-1).sum(-1).tolist()
    results = []
    for i, (request, row, start, accepted) in enumerate(zip(requests, rows, starts, agree, strict=True)):
        cache.rewind(row, start + accepted + 1)
        tokens = proposal[i, 1 : accepted + 1].tolist() + [int(verified[i, accepted])]
        request.drafted += first.lookahead
        request.accepted += accepted
        results.append((tokens, [first.num_steps] * len(tokens)))
    return results
