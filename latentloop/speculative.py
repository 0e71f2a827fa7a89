"""Self-speculative decoding: the model drafts with few iterations and verifies with many.

Each round drafts `lookahead` tokens one by one at `draft_steps`, rewinds the cache, runs the current
token and the drafts through the model in ONE forward at `num_steps`, and keeps the longest prefix
of drafts the verifier agrees with plus the verifier's own next token. Greedy output is therefore the
same as plain greedy decoding at `num_steps`; the verify forward processes lookahead + 1 tokens for
about the cost of one when decoding is bound by reading the weights. Batches accept the shortest
agreeing prefix over their rows, so every row stays exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .cache import KVCache
from .generate import Chunk, Engine, Forward


def check_speculative(num_steps: int, draft_steps: int, lookahead: int, cache: KVCache) -> None:
    """Refuse settings under which speculation could not reproduce plain greedy decoding."""
    if not isinstance(draft_steps, int) or not 1 <= draft_steps <= num_steps:
        raise ValueError(f"draft_steps must be between 1 and num_steps={num_steps}, got {draft_steps!r}")
    if not isinstance(lookahead, int) or lookahead < 1:
        raise ValueError(f"lookahead must be >= 1 drafted tokens per round, got {lookahead!r}")
    if cache.core_slots < num_steps:
        raise ValueError("speculative decoding verifies drafts in parallel, which needs every iteration's "
                         "K/V: drop kv_budget (or make it >= num_steps), or drop draft_steps")


def speculative_chunks(
    engine: Engine, first: Forward, num_steps: int, draft_steps: int, lookahead: int
) -> Iterator[Chunk]:
    """Yield accepted tokens round by round, starting from the prefill's `first` forward."""
    cache = engine.cache
    token = first.logits[:, -1].argmax(-1)  # the verifier's token: not yet in the cache
    yield Chunk(token[:, None], num_steps)
    while True:
        start = cache.length
        drafts = [token]
        for _ in range(lookahead):
            drafts.append(engine.forward(drafts[-1][:, None], draft_steps, provisional=True).logits[:, -1].argmax(-1))
        cache.rewind(start)
        proposal = torch.stack(drafts, dim=1)  # [B, lookahead + 1]: current token, then the drafts
        verified = engine.forward(proposal, num_steps).logits.argmax(-1)  # the verifier's next tokens
        agree = (verified[:, :-1] == proposal[:, 1:]).long().cumprod(-1).sum(-1)
        accepted = int(agree.min())
        cache.rewind(start + accepted + 1)
        token = verified[:, accepted]
        tokens = torch.cat([proposal[:, 1 : accepted + 1], token[:, None]], dim=1)
        yield Chunk(tokens, num_steps, drafted=lookahead, accepted=accepted)
