"""The parallel (diffusion-forcing) sampler: many positions refined at once, committed as they settle.

After the prompt, a row keeps a wavefront: its last committed token (not yet in the cache) followed by
candidate tokens for the next positions, each with a latent state of its own. Every outer step runs
`inner_steps` core iterations over the whole wavefront in ONE forward (the wavefront's K/V are written
provisionally and rewound), samples a new candidate from each position's output and appends
`headway` positions. A position commits when its latent stops moving (relative change below
`epsilon`) or has run `num_steps` iterations, and its input agrees with the token the position before
it just committed: its K/V then stay in the cache and its output is a new token.

Only committed tokens live in the cache, each with the K/V of the last iteration it ran, so the
sampler runs on a one-slot ring (`kv_budget=1`). With one position (`max_wavefront=1`), the `fixed`
rule, no noise and no embedding mixing it computes exactly plain decoding under that ring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .cache import KVCache
from .engine import Engine
from .request import Request

FREEZE_RULES = ("prefix", "rightmost", "fixed")


@dataclass(frozen=True)
class Parallel:
    """Settings of the parallel sampler (defaults: the paper's)."""

    inner_steps: int = 4  # core iterations per outer step (r')
    freeze: str = "prefix"  # prefix: the longest converged prefix; rightmost: up to the rightmost; fixed
    epsilon: float = 0.03  # a position has converged when ||z - z_prev|| / ||z|| < epsilon
    noise: float = 0.0  # beta: noise mixed into a state with weight beta / (1 + iterations done there)
    embed_ema: float = 0.1  # eta: weight of a position's previous embedding in its new one
    headway: int = 1  # positions appended per outer step
    max_wavefront: int = 128

    def __post_init__(self) -> None:
        for name in ("inner_steps", "headway", "max_wavefront"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.freeze not in FREEZE_RULES:
            raise ValueError(f"freeze must be one of {', '.join(FREEZE_RULES)}, got {self.freeze!r}")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0 (the relative latent change that counts as converged), "
                             f"got {self.epsilon}")
        if not self.noise >= 0:
            raise ValueError(f"noise (beta) must be >= 0, got {self.noise}")
        if not 0 <= self.embed_ema < 1:
            raise ValueError(f"embed_ema (eta) must lie in [0, 1), got {self.embed_ema}")


@dataclass
class Wavefront:
    """A row's uncommitted positions: input tokens (the first one committed), states, embeddings."""

    tokens: list[int]
    states: Tensor  # [W, h]
    embeddings: Tensor | None  # [W, h], None before the first step
    iterations: list[int] = field(default_factory=list)  # done at each position
    history: list[tuple[int, int, int]] = field(default_factory=list)  # per step: tokens before, width, committed


def check_parallel(request: Request, cache: KVCache) -> None:
    """Refuse combinations under which the sampler cannot work."""
    if request.draft_steps is not None or request.exit is not None or request.warm_start:
        raise ValueError("the parallel sampler decides each position's depth itself: drop draft_steps, exit and "
                         "warm_start, or use the plain sampler")
    if request.sampler.repetition_penalty != 1.0:
        raise ValueError("the parallel sampler samples many positions at once and applies no repetition_penalty: "
                         "drop it (1.0), or use the plain sampler")
    if cache.core_slots != 1:
        raise ValueError("the parallel sampler keeps one iteration of K/V per committed token: run it on a cache "
                         "with kv_budget=1")
    if request.num_steps < request.parallel.inner_steps:
        raise ValueError(f"num_steps ({request.num_steps}) caps each position's iterations and must be >= "
                         f"inner_steps ({request.parallel.inner_steps})")


def parallel_step(engine: Engine, requests: list[Request]) -> list[tuple[list[int], list[int]]]:
    """One outer step for every row in `requests` in one forward; per request, the tokens it committed
    and the iterations each took."""
    model, cache = engine.model, engine.cache
    hidden = model.config.hidden_size
    for r in requests:
        if r.wavefront is None:
            empty = torch.zeros(1, hidden, dtype=model.dtype, device=model.device)
            r.wavefront = Wavefront([r.pending], _fresh(model, r, empty, 1), None, [0])
    fronts = [r.wavefront for r in requests]
    widths = [len(f.tokens) for f in fronts]
    width, batch = max(widths), len(requests)
    ids = torch.zeros(batch, width, dtype=torch.long)
    before = torch.zeros(batch, width, hidden, dtype=model.dtype, device=model.device)
    previous = torch.zeros_like(before)
    weight = torch.zeros(batch, width, 1, dtype=model.dtype, device=model.device)
    for i, (r, f) in enumerate(zip(requests, fronts, strict=True)):
        ids[i, : widths[i]] = torch.tensor(f.tokens)
        before[i, : widths[i]] = _with_noise(model, r, f)
        if f.embeddings is not None:
            known = f.embeddings.shape[0]
            previous[i, :known] = f.embeddings
            weight[i, :known] = r.parallel.embed_ema
    starts = [cache.lengths[r.row] for r in requests]
    out = engine.forward(ids, [r.parallel.inner_steps for r in requests], rows=[r.row for r in requests],
                         state=before, provisional=True, lengths=widths, embedding_mix=(previous, weight))
    change = (out.state - before).norm(dim=-1) / out.state.norm(dim=-1).clamp_min(1e-12)  # [B, W]
    results = []
    for i, (r, f) in enumerate(zip(requests, fronts, strict=True)):
        n = widths[i]
        logits = out.logits[i, :n]
        candidates = [int(r.sampler(logits[p : p + 1], r.seen, r.generator)) for p in range(n)]
        iterations = [k + r.parallel.inner_steps for k in f.iterations]
        committed = _committed(r, f, candidates, change[i, :n].tolist(), iterations)
        f.history.append((len(r.tokens), n, committed))
        cache.rewind(r.row, starts[i] + committed)
        results.append((candidates[:committed], iterations[:committed]))
        _advance(model, r, f, candidates, out.state[i, :n], out.embedding[i, :n], iterations, committed)
    return results


def _committed(r: Request, f: Wavefront, candidates: list[int], change: list[float], iterations: list[int]) -> int:
    """How many leading positions commit this step."""
    settings = r.parallel
    done = [k >= r.num_steps or (settings.freeze != "fixed" and c < settings.epsilon)
            for k, c in zip(iterations, change, strict=True)]
    agrees = [p == 0 or f.tokens[p] == candidates[p - 1] for p in range(len(done))]  # input = committed token
    if settings.freeze == "rightmost":
        last = max((p for p, d in enumerate(done) if d), default=-1)
        done = [p <= last for p in range(len(done))]
    count = 0
    while count < len(done) and done[count] and agrees[count]:
        count += 1
    return count


def _advance(model, r: Request, f: Wavefront, candidates: list[int], states: Tensor, embeddings: Tensor,
             iterations: list[int], committed: int) -> None:
    """The next wavefront: positions from the first uncommitted one on, whose inputs are the candidates
    of the positions before them (the first: the newest committed token), plus up to `headway` new
    positions, never more than the tokens still to generate."""
    width = len(candidates)
    limit = min(r.parallel.max_wavefront, max(r.max_new_tokens - len(r.tokens) - committed, 1))
    kept = min(width - committed, limit)
    grow = min(r.parallel.headway, limit - kept)
    inputs = [f.tokens[0], *candidates]  # inputs[p]: position p's input after this step
    f.tokens = inputs[committed : committed + kept + grow]
    f.tokens += [f.tokens[-1]] * (kept + grow - len(f.tokens))  # headway > 1: no candidate yet, repeat the last
    f.states = torch.cat([states[committed : committed + kept], _fresh(model, r, states, grow)])
    f.embeddings = embeddings[committed : committed + kept]
    f.iterations = iterations[committed : committed + kept] + [0] * grow


def _fresh(model, r: Request, like: Tensor, count: int) -> Tensor:
    """Initial latents for `count` new positions, from the request's generator."""
    e = torch.zeros(1, count, like.shape[-1], dtype=like.dtype, device=like.device)
    return model.initial_state(e, r.init_scale, r.generator)[0]


def _with_noise(model, r: Request, f: Wavefront) -> Tensor:
    """The states with noise mixed in at weight beta / (1 + iterations done), when beta > 0."""
    if not r.parallel.noise:
        return f.states
    weights = torch.tensor([r.parallel.noise / (1 + k) for k in f.iterations], dtype=f.states.dtype,
                           device=f.states.device)[:, None]
    noise = model.initial_state(f.states[None], 1.0, r.generator)[0]
    return f.states + weights.clamp(max=1.0) * (noise - f.states)
