"""The continuous-batching engine: every way of decoding goes through it.

`Engine.forward` runs new tokens of some cache rows through prelude, core and coda. Each row has its
own depth and exit criterion; rows that are done thinking leave the computed set (compaction), so a
mixed batch costs what its rows need, not what the deepest row needs.

`Scheduler.step` is one turn of the serving loop: admit waiting requests into free rows, prefill a
chunk of each new prompt (all but its last token, so running rows keep decoding meanwhile), run one
decode step over the running rows (the prompt's last token is the first one decoded, under the
request's depth and exit), hand the new tokens to each request and retire the finished ones.

A decode step does not hold rows to one token each: every row ponders its own token (`Thought`), one
core iteration of all of them at a time, each at its own iteration, and the step ends as soon as any row
is done; the others carry on in the next step. A row that needs 4 iterations then turns out 8 tokens
while one beside it thinks 32 iterations about one, so a mixed batch runs as many iterations as its rows
need on average, not as its deepest row needs (Continuous Depth Batching, arXiv 2608.09444).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .cache import CacheView, KVCache
from .exits import ExitCriterion, State, Watch, start_states
from .model import Context, RecurrentDepthLM
from .request import Request

if TYPE_CHECKING:
    from .compiled import CompiledSteps


@dataclass
class Forward:
    logits: Tensor  # [B, S, V] float32
    state: Tensor  # [B, S, h] final recurrent state (what warm start feeds to the next token)
    iterations: Tensor  # [B] iterations each row ran
    embedding: Tensor  # [B, S, h] the prelude's output injected at every iteration (the parallel sampler mixes it)


@dataclass(eq=False)
class Thought:
    """A token a row is pondering, kept from one decode step to the next: the prelude's injection, the
    state so far, the iterations it has run and its exit criterion's running comparison."""

    e: Tensor  # [1, 1, h]
    x: Tensor  # [1, 1, h]
    depth: int  # the most iterations it runs
    criterion: ExitCriterion | None
    comparison: State | None
    steps: int = 0


def _per_row(value, batch: int) -> list:
    return list(value) if isinstance(value, list | tuple) else [value] * batch


def _depth(num_steps: int, criterion: ExitCriterion | None) -> int:
    """The most iterations a token runs: its exit's max_steps where it has one, else num_steps."""
    return (criterion.max_steps or num_steps) if criterion is not None else num_steps


PADDING_SLACK = 0.125  # a prefill forward computes at most this fraction more tokens than its prompts hold


def similar_lengths(lengths: list[int]) -> list[list[int]]:
    """Indices of `lengths`, in groups that can share a right-padded forward: longest first, each group's
    padding at most PADDING_SLACK of its real tokens (16 prompts of 17-60 tokens in one forward computed 960
    token positions for 633 real ones)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        group = groups[-1] if groups else []
        real = sum(lengths[j] for j in group) + lengths[i]
        if group and (len(group) + 1) * lengths[group[0]] <= (1 + PADDING_SLACK) * real:
            group.append(i)
        else:
            groups.append([i])
    return groups


class Engine:
    """A model and its row cache. With `compile=True`, every forward goes through the compiled pieces
    (`compiled.py`), whose graphs serve every batch size; `compaction=False` runs every row of a forward
    to its deepest row (for comparison)."""

    def __init__(
        self, model: RecurrentDepthLM, cache: KVCache, init_scale: float = 1.0,
        generator: torch.Generator | None = None, compile: bool = False, compaction: bool = True,
    ) -> None:
        self.model, self.cache = model, cache
        self.init_scale, self.generator = init_scale, generator
        self.compaction = compaction
        self.compiled = None
        if compile:
            from .compiled import compiled_steps  # inductor: imported only when asked for

            self.compiled = compiled_steps(model)
        self.core_rows = 0  # row-iterations the core computed: what compaction saves

    @property
    def runner(self) -> RecurrentDepthLM | CompiledSteps:
        """What computes the pieces (`embed`, `core_step`, `recur`, `decode`): the compiled graphs or the model."""
        return self.compiled if self.compiled is not None else self.model

    @torch.inference_mode()
    def forward(
        self, ids: Tensor, num_steps: int | list[int], rows: list[int] | None = None,
        exit: ExitCriterion | None | list[ExitCriterion | None] = None, state: Tensor | list | None = None,
        provisional: bool = False, init_scale: float | list[float] | None = None,
        generators: list[torch.Generator | None] | None = None, lengths: list[int] | None = None,
        embedding_mix: tuple[Tensor, Tensor] | None = None,
    ) -> Forward:
        """Append `ids` [B, S] to cache rows `rows` (default 0..B-1); with `lengths`, row i holds only its
        first lengths[i] tokens (right padding: several prompts prefilled in one forward). Depth, exit,
        initial state (`state` [B, S, h], or a list with None for a random start), init scale and generator
        may differ per row. `provisional` tokens are rewound before others read them (`KVCache.commit`).
        `embedding_mix` = (previous [B, S, h], weight [B, S, 1]) moves each injection toward `previous`."""
        model, cache = self.model, self.cache
        batch, length = ids.shape
        rows = list(range(batch)) if rows is None else rows
        criteria = _per_row(exit, batch)
        depths = [_depth(n, c) for c, n in zip(criteria, _per_row(num_steps, batch), strict=True)]
        counts = lengths or [length] * batch
        view = cache.view(rows, counts)
        ids = ids.to(model.device)
        run = self.runner
        ctx = model.context(length, position_ids=view.positions, cache=view)
        e = run.embed(ids, ctx)
        if embedding_mix is not None:
            previous, weight = embedding_mix
            e = e.lerp(previous.to(e.dtype), weight.to(e.dtype))
        x = self._initial_state(e, state, init_scale, generators, counts)
        x, iterations = self._iterate(run, x, e, ctx, depths, criteria)
        logits = run.decode(x, ctx)[1]
        cache.commit(rows, counts, iterations, provisional=provisional)
        return Forward(logits, x, torch.tensor(iterations), e)

    def _initial_state(self, e: Tensor, state, init_scale, generators, counts: list[int]) -> Tensor:
        """Each row's own start: a given state, or noise from the row's generator for its `counts[i]` real
        tokens (zeros at scale 0), so that a row draws the same noise alone or in any batch."""
        if isinstance(state, Tensor):
            return state.to(e.dtype)
        batch = len(counts)
        states = _per_row(state, batch)
        scales = _per_row(self.init_scale if init_scale is None else init_scale, batch)
        gens = generators or [self.generator] * batch
        x = torch.zeros_like(e)
        for i in range(batch):
            if states[i] is not None:
                x[i : i + 1] = states[i]
            elif scales[i]:
                x[i : i + 1, : counts[i]] = self.model.initial_state(e[i : i + 1, : counts[i]], scales[i], gens[i])
        return x

    def _iterate(self, run, x: Tensor, e: Tensor, ctx: Context, depths: list[int],
                 criteria: list[ExitCriterion | None]) -> tuple[Tensor, list[int]]:
        """Iterate each row to its depth or until its criterion fires (not before min_steps)."""
        batch = x.shape[0]
        if all(c is None for c in criteria) and len(set(depths)) == 1:
            self.core_rows += batch * depths[0]
            return run.recur(x, e, ctx, depths[0]), depths
        watching = [i for i in range(batch) if criteria[i] is not None]  # the watch's rows, in order
        watch = self._watch(criteria, watching, start_states(criteria, x, self.model.config.vocab_size))
        iterations, done = list(depths), [False] * batch
        for step in range(max(depths)):
            active = [i for i in range(batch) if not done[i]]
            if not active:
                break
            x = self._core_step(run, x, e, ctx, step, active)
            kept = [n for n, i in enumerate(watching) if not done[i]]  # empty while nothing is watched
            if len(kept) < len(watching):
                watch.keep(kept)
                watching = [watching[n] for n in kept]
            for i in self._converged(run, x, ctx, watch, watching, criteria, [step + 1] * batch)[0]:
                done[i], iterations[i] = True, step + 1
            for i in active:
                done[i] = done[i] or step + 1 >= depths[i]
        return x, iterations

    def _watch(self, criteria: list[ExitCriterion | None], rows: list[int], states: list[State | None],
               ) -> Watch | None:
        """The exit comparisons of the batch entries `rows` (those with a criterion), None without any."""
        if not rows:
            return None
        return Watch([criteria[i] for i in rows], [states[i] for i in rows], self.model.config.vocab_size)

    def _converged(self, run, x: Tensor, ctx: Context, watch: Watch | None, rows: list[int],
                   criteria: list[ExitCriterion | None], steps: list[int]) -> tuple[list[int], Tensor | None]:
        """After an iteration: the entries of `rows` (the watch's, in order) whose exit criterion fires,
        `steps[i]` iterations in (not before its min_steps), and the logits [len(rows), 1, V] decoded for
        them (None when no criterion needs logits); every watched row's comparison moves on."""
        if watch is None or not rows:
            return [], None
        index, sub = self._select(ctx, rows, x.shape[0])
        watched = x if index is None else x[index]
        logits = run.decode(watched, sub)[1] if any(criteria[i].needs_logits for i in rows) else None
        flags = watch.observe(watched, logits)
        return [i for i, flag in zip(rows, flags, strict=True) if flag and steps[i] >= criteria[i].min_steps], logits

    @torch.inference_mode()
    def begin(self, ids: Tensor, view: CacheView, num_steps: list[int], exit: list[ExitCriterion | None],
              state: list[Tensor | None], init_scale: list[float], generators: list[torch.Generator | None],
              ) -> list[Thought]:
        """Start pondering one new token per row of `view` (ids [B, 1]): the prelude writes its K/V at the
        row's next position, and each row starts from its given state or its own noise."""
        ctx = self.model.context(1, position_ids=view.positions, cache=view)
        e = self.runner.embed(ids.to(self.model.device), ctx)
        x = self._initial_state(e, state, init_scale, generators, [1] * len(ids))
        comparisons = start_states(exit, x, self.model.config.vocab_size)
        return [Thought(e[i : i + 1], x[i : i + 1], _depth(n, c), c, comparison)
                for i, (n, c, comparison) in enumerate(zip(num_steps, exit, comparisons, strict=True))]

    @torch.inference_mode()
    def ponder(self, view: CacheView, thoughts: list[Thought]) -> tuple[list[int], Forward]:
        """Core iterations of the rows of `view`, each at its own iteration, until at least one of them is
        done (its depth, or its exit criterion); those go through the coda and are committed. Returns
        their indices and their `Forward`; the other thoughts carry their state to the next call."""
        run = self.runner
        ctx = self.model.context(1, position_ids=view.positions, cache=view)
        x, e = torch.cat([t.x for t in thoughts]), torch.cat([t.e for t in thoughts])
        criteria = [t.criterion for t in thoughts]
        watching = [i for i, c in enumerate(criteria) if c is not None]
        watch = self._watch(criteria, watching, [t.comparison for t in thoughts])
        done: list[int] = []
        while not done:
            at = Context(rope=ctx.rope, cache=view.at_steps([t.steps for t in thoughts]))
            x = run.core_step(x, e, at, 0)
            self.core_rows += len(thoughts)
            for t in thoughts:
                t.steps += 1
            converged, logits = self._converged(run, x, at, watch, watching, criteria, [t.steps for t in thoughts])
            converged = set(converged)
            done = [i for i, t in enumerate(thoughts) if i in converged or t.steps >= t.depth]
        for i, t in enumerate(thoughts):
            t.x = x[i : i + 1]
        if watch is not None:
            for i, comparison in zip(watching, watch.states(), strict=True):
                thoughts[i].comparison = comparison
        # an exit's logits are those of the iteration it ends at
        decoded = {} if logits is None else {i: logits[n : n + 1] for n, i in enumerate(watching) if i in done}
        need = [i for i in done if i not in decoded]
        if need:
            index, sub = self._select(ctx, need, len(thoughts))
            decoded |= dict(zip(need, run.decode(x if index is None else x[index], sub)[1].split(1), strict=True))
        logits = torch.cat([decoded[i] for i in done])
        index = None if len(done) == len(thoughts) else torch.tensor(done, device=x.device)
        finished = x if index is None else x[index]
        cache_rows, iterations = view.rows.tolist(), [thoughts[i].steps for i in done]
        self.cache.commit([cache_rows[i] for i in done], 1, iterations)
        return done, Forward(logits, finished, torch.tensor(iterations), e if index is None else e[index])

    def _core_step(self, run, x: Tensor, e: Tensor, ctx: Context, step: int, active: list[int]) -> Tensor:
        """One iteration for the rows in `active`: only they are computed (compaction), or all rows are
        and the others keep their state and write to the scratch column (compaction off)."""
        batch = x.shape[0]
        if self.compaction or len(active) == batch:
            index, sub = self._select(ctx, active, batch)
            self.core_rows += len(active)
            if index is None:
                return run.core_step(x, e, ctx, step)
            return x.index_copy(0, index, run.core_step(x[index], e[index], sub, step))
        writes = torch.zeros(batch, dtype=torch.bool, device=x.device)
        writes[active] = True
        every = torch.arange(batch, device=x.device)
        sub = Context(rope=ctx.rope, cache=ctx.cache.subset(every, writes))
        self.core_rows += batch
        return torch.where(writes[:, None, None], run.core_step(x, e, sub, step), x)

    def _select(self, ctx: Context, chosen: list[int], batch: int) -> tuple[Tensor | None, Context]:
        """The batch entries `chosen` as index and context (None: all of them)."""
        if len(chosen) == batch:
            return None, ctx
        index = torch.tensor(chosen, device=ctx.rope.device)
        view: CacheView = ctx.cache
        rope = ctx.rope[index] if ctx.rope.shape[0] > 1 else ctx.rope
        return index, Context(rope=rope, cache=view.subset(index))


@dataclass
class EngineStats:
    prefill_tokens: int = 0
    decode_steps: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0  # where a run's time went: prompts, and the steps that decode
    decode_seconds: float = 0.0


class Scheduler:
    """Requests in, tokens out: a waiting queue, rows of the cache, one decode step at a time.

    `prefill_chunk` bounds the prompt tokens one request prefills per step (None: the whole prompt)."""

    def __init__(self, engine: Engine, prefill_chunk: int | None = None) -> None:
        if prefill_chunk is not None and (not isinstance(prefill_chunk, int) or prefill_chunk < 1):
            raise ValueError(f"prefill_chunk must be a positive number of tokens (or None), got {prefill_chunk!r}")
        self.engine, self.prefill_chunk = engine, prefill_chunk
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = EngineStats()

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def submit(self, request: Request) -> Request:
        """Queue a request, after checking that it fits this engine; raises ValueError naming the problem."""
        model, cache = self.engine.model, self.engine.cache
        vocab, context = model.config.vocab_size, model.config.context_length
        if min(request.prompt) < 0 or max(request.prompt) >= vocab:
            raise ValueError(f"prompt token ids must lie in [0, {vocab}) (the model's vocabulary); got ids from "
                             f"{min(request.prompt)} to {max(request.prompt)}: is this the model's tokenizer?")
        if len(request.prompt) >= context:
            raise ValueError(f"the prompt has {len(request.prompt)} tokens but the model's context length is "
                             f"{context}; shorten the prompt (the answer needs room too)")
        if request.positions_needed > min(context, cache.max_length):
            room = min(context, cache.max_length)
            raise ValueError(f"the prompt ({len(request.prompt)} tokens) plus max_new_tokens "
                             f"({request.max_new_tokens}) need {request.positions_needed} positions, but "
                             f"{'the model context' if context <= cache.max_length else 'a cache row'} holds "
                             f"{room}; shorten the prompt or lower max_new_tokens")
        if request.depth > cache.num_steps:
            raise ValueError(f"num_steps {request.depth} is above this engine's maximum of {cache.num_steps} "
                             "iterations per token; ask for fewer")
        if request.parallel is not None:
            from .parallel import check_parallel

            check_parallel(request, cache)
        if request.draft_steps is not None:
            from .speculative import check_speculative

            check_speculative(request, cache)
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request (a client went away): its row is free for the next one."""
        if request in self.waiting:
            self.waiting.remove(request)
        elif request in self.running:
            self._retire(request)
        if request.finish_reason is None:
            request.finish_reason = "cancelled"
            if request.on_tokens is not None:
                request.on_tokens(request, [])

    def step(self) -> list[Request]:
        """Admit, prefill one chunk per new request, decode one step; returns the requests that finished."""
        self._admit()
        prefilling = [r for r in self.running if r.prefilled < len(r.prompt) - 1]
        started = time.perf_counter()
        if prefilling:
            self._prefill(prefilling)
        prefilled = time.perf_counter()
        ready = [r for r in self.running if r.prefilled == len(r.prompt) - 1]
        if ready:
            self._decode(ready)
        self.stats.prefill_seconds += prefilled - started
        self.stats.decode_seconds += time.perf_counter() - prefilled
        finished = [r for r in self.running if r.finished]
        for request in finished:
            self._retire(request)
        return finished

    def run(self) -> None:
        while not self.idle:
            self.step()

    def _admit(self) -> None:
        cache, device = self.engine.cache, self.engine.model.device
        while self.waiting and cache.free_rows:
            request = self.waiting.popleft()
            request.row = cache.allocate(request.depth)
            if request.seed is not None:
                request.generator = torch.Generator(device=device).manual_seed(request.seed)
            if request.sampler.repetition_penalty != 1.0:
                request.seen = torch.zeros(1, self.engine.model.config.vocab_size, dtype=torch.bool, device=device)
                request.seen[0, request.prompt] = True
            self.running.append(request)

    def _retire(self, request: Request) -> None:
        self.running.remove(request)
        request.thought = None
        self.engine.cache.release(request.row)

    def _prefill(self, requests: list[Request]) -> None:
        """The next chunk of each prompt but its last token, at each request's num_steps: prompts of similar
        lengths share a forward (`similar_lengths`); requests with `prompt_exit` go one token at a time
        under their exit criterion, in a forward of their own."""
        plain = [r for r in requests if not r.prompt_exit]
        chunks = [r.prompt[r.prefilled : min(len(r.prompt) - 1, r.prefilled + (self.prefill_chunk or len(r.prompt)))]
                  for r in plain]
        batches = [[(plain[i], chunks[i]) for i in group] for group in similar_lengths([len(c) for c in chunks])]
        exiting = [r for r in requests if r.prompt_exit]
        if exiting:
            batches.append([(r, r.prompt[r.prefilled : r.prefilled + 1]) for r in exiting])
        for batch in batches:
            group = [r for r, _ in batch]
            width = max(len(c) for _, c in batch)
            ids = torch.tensor([c + [0] * (width - len(c)) for _, c in batch])
            self.engine.forward(ids, [r.num_steps for r in group], rows=[r.row for r in group],
                                exit=[r.exit if r.prompt_exit else None for r in group],
                                init_scale=[r.init_scale for r in group], generators=[r.generator for r in group],
                                lengths=[len(c) for _, c in batch])
            for r, chunk in batch:
                r.prefilled += len(chunk)
                self.stats.prefill_tokens += len(chunk)

    def _decode(self, ready: list[Request]) -> None:
        """One step for every ready request: plain rows in one forward, parallel rows in another,
        speculative rows by their kind."""
        self.stats.decode_steps += 1
        plain = [r for r in ready if r.draft_steps is None and r.parallel is None]
        if plain:
            self._plain_step(plain)
        parallel = [r for r in ready if r.parallel is not None]
        if parallel:
            from .parallel import parallel_step

            for request, (tokens, iterations) in zip(parallel, parallel_step(self.engine, parallel), strict=True):
                if tokens:  # a step may commit nothing: every position still moving
                    self._deliver(request, tokens, iterations)
        kinds: dict[tuple, list[Request]] = {}
        for r in ready:
            if r.draft_steps is not None:
                kinds.setdefault((r.num_steps, r.draft_steps, r.lookahead), []).append(r)
        if kinds:
            from .speculative import speculative_step

            for group in kinds.values():
                for request, (tokens, iterations) in zip(group, speculative_step(self.engine, group), strict=True):
                    self._deliver(request, tokens, iterations)

    @torch.inference_mode()  # the view's tensors are what compiled graphs were traced with
    def _plain_step(self, requests: list[Request]) -> None:
        """Rows ponder their tokens until one is done (`Engine.ponder`); a row without a token in mind starts
        the next. Without compaction every row runs a whole token to the deepest row's depth (the comparison)."""
        engine = self.engine
        if not engine.compaction:
            out = engine.forward(
                torch.tensor([[r.pending] for r in requests]), [r.num_steps for r in requests],
                rows=[r.row for r in requests], exit=[r.exit for r in requests], state=[r.state for r in requests],
                init_scale=[r.init_scale for r in requests], generators=[r.generator for r in requests])
            self._choose(requests, out)
            return
        view = engine.cache.view([r.row for r in requests], 1)
        new = [i for i, r in enumerate(requests) if r.thought is None]
        if new:
            starting = [requests[i] for i in new]
            sub = view if len(new) == len(requests) else view.subset(torch.tensor(new, device=view.rows.device))
            thoughts = engine.begin(
                torch.tensor([[r.pending] for r in starting]), sub, [r.num_steps for r in starting],
                [r.exit for r in starting], [r.state for r in starting], [r.init_scale for r in starting],
                [r.generator for r in starting])
            for r, thought in zip(starting, thoughts, strict=True):
                r.thought = thought
        done, out = engine.ponder(view, [r.thought for r in requests])
        finished = [requests[i] for i in done]
        for r in finished:
            r.thought = None
        self._choose(finished, out)

    def _choose(self, requests: list[Request], out: Forward) -> None:
        """Each request's next token from its row of `out`, handed to it."""
        logits, counts = out.logits[:, -1], out.iterations.tolist()
        greedy = [i for i, r in enumerate(requests) if not r.sampler.do_sample and r.seen is None]
        tokens = [0] * len(requests)
        if greedy:
            for i, token in zip(greedy, logits[greedy].argmax(-1).tolist(), strict=True):
                tokens[i] = token
        for i, r in enumerate(requests):
            if i not in greedy:
                tokens[i] = int(r.sampler(logits[i : i + 1], r.seen, r.generator))
            if r.seen is not None:
                r.seen[0, tokens[i]] = True
            if r.warm_start:
                r.state = out.state[i : i + 1, -1:]
            self._deliver(r, [tokens[i]], [counts[i]])

    def _deliver(self, request: Request, tokens: list[int], iterations: list[int]) -> None:
        if request.first_token_time is None:
            request.first_token_time = time.perf_counter()
        before = len(request.tokens)
        request.accept(tokens, iterations)
        self.stats.generated_tokens += len(request.tokens) - before
