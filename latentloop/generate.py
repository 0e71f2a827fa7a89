"""Generation: one decode loop where depth, early exit, KV budget, warm start, sampling, stopping,
streaming, padded batches and speculative drafting are options.

`Engine.forward` runs new tokens through the model's pieces against a `KVCache`: prelude, the core at
a fixed depth or until an exit criterion fires (each row on its own), then coda and head.
A chunk producer (`_plain_chunks`, or `speculative.speculative_chunks`) turns forwards into new
tokens; `_run` feeds them through stop ids, stop strings and `max_new_tokens` for every row and
yields the text of row 0 as it arrives. `generate` collects the result; `stream` hands out the text.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .cache import KVCache
from .compiled import CompiledSteps, compiled_steps
from .exits import ExitCriterion, parse_exit
from .model import Context, RecurrentDepthLM
from .sampling import Sampler

Prompt = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | Tensor


@dataclass
class Forward:
    logits: Tensor  # [B, S, V] float32
    state: Tensor  # [B, S, h] final recurrent state (what warm start feeds to the next token)
    iterations: Tensor | int  # per row [B], or one count for all


@dataclass
class Chunk:
    """New tokens for every row from one step of a producer; `iterations` applies to each of them."""

    tokens: Tensor  # [B, n]
    iterations: Tensor | int
    drafted: int = 0
    accepted: int = 0


class Engine:
    """A model and its KV cache: runs new tokens through prelude, core (fixed or adaptive) and coda.
    With `compile=True`, every forward goes through the compiled pieces (`compiled.py`)."""

    def __init__(
        self, model: RecurrentDepthLM, cache: KVCache, init_scale: float = 1.0,
        generator: torch.Generator | None = None, compile: bool = False,
    ) -> None:
        self.model, self.cache = model, cache
        self.init_scale, self.generator = init_scale, generator
        self.compiled: CompiledSteps | None = compiled_steps(model) if compile else None

    @torch.inference_mode()
    def forward(
        self, ids: Tensor, num_steps: int, valid: Tensor | None = None, exit: ExitCriterion | None = None,
        state: Tensor | None = None, provisional: bool = False,
    ) -> Forward:
        """Append `ids` [B, S] to the cache; `state` [B, S, h] replaces the random initial latent;
        `provisional` tokens are rewound before others read them (see `KVCache.commit`)."""
        model, cache = self.model, self.cache
        run = self.compiled if self.compiled is not None else model
        positions = cache.begin(valid, ids.shape[1])
        ctx = model.context(ids.shape[1], position_ids=positions, cache=cache)
        e = run.embed(ids, ctx)
        x = model.initial_state(e, self.init_scale, self.generator) if state is None else state
        if exit is None:
            x = run.recur(x, e, ctx, num_steps)
            logits, iterations = run.decode(x, ctx)[1], num_steps
        else:
            x, logits, iterations = self._adaptive(run, x, e, ctx, exit, num_steps)
        cache.commit(iterations, provisional=provisional)
        return Forward(logits, x, iterations)

    def _adaptive(
        self, run: RecurrentDepthLM | CompiledSteps, x: Tensor, e: Tensor, ctx: Context, exit: ExitCriterion,
        num_steps: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Iterate until each row's criterion fires (not before min_steps); exited rows stay frozen."""
        model, cache = self.model, self.cache
        batch, max_steps = x.shape[0], exit.max_steps or num_steps
        update = exit.begin(x, model.config.vocab_size)
        done = torch.zeros(batch, dtype=torch.bool, device=x.device)
        iterations = torch.full((batch,), max_steps, dtype=torch.long, device=x.device)
        logits = None
        for step in range(max_steps):
            if batch > 1:
                cache.active = ~done
                x = torch.where(done[:, None, None], x, run.core_step(x, e, ctx, step))
            else:
                x = run.core_step(x, e, ctx, step)
            logits = run.decode(x, ctx)[1] if exit.needs_logits else None
            converged = update(x, logits)
            if step + 1 >= exit.min_steps:
                iterations = torch.where(converged & ~done, step + 1, iterations)
                done = done | converged
                if bool(done.all()):
                    break
        cache.active = None
        if logits is None:
            logits = run.decode(x, ctx)[1]
        return x, logits, iterations


def _plain_chunks(
    engine: Engine, first: Forward, sampler: Sampler, seen: Tensor | None, num_steps: int,
    exit: ExitCriterion | None, warm_start: bool,
) -> Iterator[Chunk]:
    """Token by token: sample from the last forward, yield, then run the token through the model."""
    out = first
    while True:
        token = sampler(out.logits[:, -1], seen, engine.generator)
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        yield Chunk(token[:, None], out.iterations)
        out = engine.forward(token[:, None], num_steps, exit=exit, state=out.state[:, -1:] if warm_start else None)


class _Detokenizer:
    """Incremental decoding: text deltas without re-decoding everything, holding back split UTF-8."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def push(self, token: int, final: bool = False) -> str:
        self.ids.append(token)
        return self.flush() if final else self._delta(complete_only=True)

    def flush(self) -> str:
        return self._delta(complete_only=False)

    def _delta(self, complete_only: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) <= len(before) or (complete_only and after.endswith("\ufffd")):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]


@dataclass
class _Row:
    tokens: list[int] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    detokenizer: _Detokenizer | None = None


@dataclass
class GenerationResult:
    """New tokens, text and statistics per row (row order = prompt order)."""

    tokens: list[list[int]]
    iterations: list[list[int]]  # iterations of the forward that produced each token
    texts: list[str] | None
    finish_reasons: list[str]  # "stop" (stop id or string) or "length"
    prompt_tokens: int
    prefill_seconds: float
    total_seconds: float
    cache_bytes: int
    drafted: int = 0
    accepted: int = 0

    @property
    def text(self) -> str | None:
        return self.texts[0] if self.texts is not None else None

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tokens_per_second(self) -> float:
        """New tokens of all rows per second of wall time, prefill included."""
        return self.new_tokens / self.total_seconds if self.total_seconds > 0 else float("inf")

    @property
    def decode_tokens_per_second(self) -> float:
        """New tokens per second after the prompt's forward (which gives each row its first token): the
        steady rate, bound by streaming the weights once per token, where the prompt is bound by compute."""
        seconds = self.total_seconds - self.prefill_seconds
        return (self.new_tokens - len(self.tokens)) / seconds if seconds > 0 else float("inf")

    @property
    def mean_iterations(self) -> float:
        counts = [n for row in self.iterations for n in row]
        return sum(counts) / len(counts) if counts else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """Fraction of speculative drafts the verifier accepted (None without speculation)."""
        return self.accepted / self.drafted if self.drafted else None

    def summary(self) -> str:
        line = (f"{self.new_tokens} tokens, {self.mean_iterations:.1f} iterations/token, "
                f"{self.tokens_per_second:.1f} tokens/s")
        if self.new_tokens > len(self.tokens):
            line += f" ({self.decode_tokens_per_second:.1f} after the prompt)"
        if self.acceptance_rate is not None:
            line += f", {self.acceptance_rate:.0%} of drafts accepted"
        return line


def prepare_prompt(
    prompt: Prompt, tokenizer=None, attention_mask: Tensor | None = None, pad_id: int = 0
) -> tuple[Tensor, Tensor]:
    """Text or ids (one row or many) -> left-padded ids [B, L] and a bool mask of real tokens."""
    if isinstance(prompt, Tensor):
        ids = prompt.long().view(1, -1) if prompt.dim() == 1 else prompt.long()
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} does not match prompt shape {tuple(ids.shape)}")
        rows = None
    else:
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not texts:
            raise ValueError("the prompt is empty; give at least one token")
        if all(isinstance(t, str) for t in texts):
            if tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer: pass tokenizer=..., "
                                 "or pass token ids (a list of ints or a [batch, length] tensor)")
            rows = [tokenizer.encode_prompt(t) for t in texts]
        elif all(isinstance(t, int) for t in texts):
            rows = [texts]
        elif all(isinstance(t, Sequence) and all(isinstance(i, int) for i in t) for t in texts):
            rows = [list(t) for t in texts]
        else:
            raise ValueError("prompt must be text, a list of texts, a list of token ids, a list of such lists, "
                             "or a [batch, length] tensor of ids")
    if rows is not None:
        if any(len(r) == 0 for r in rows):
            raise ValueError("a prompt is empty (no real tokens); give at least one token")
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    if ids.numel() == 0 or not bool(mask.any(-1).all()):
        raise ValueError("a prompt is empty (no real tokens); give at least one token")
    return ids, mask


def _run(
    model: RecurrentDepthLM,
    prompt: Prompt,
    tokenizer=None,
    num_steps: int = 32,
    init_scale: float = 1.0,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    exit: str | ExitCriterion | None = None,
    kv_budget: int | None = None,
    warm_start: bool = False,
    stop: str | Sequence[str] | None = None,
    stop_ids: Sequence[int] | None = None,
    draft_steps: int | None = None,
    lookahead: int = 4,
    attention_mask: Tensor | None = None,
    compile: bool = False,
) -> Iterator[str]:
    """The shared driver: yields row 0's text as it is generated; returns the GenerationResult."""
    started = time.perf_counter()
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1 (iterations of the core per token), got {num_steps!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    criterion = parse_exit(exit)
    sampler = Sampler(do_sample, temperature, top_k, top_p, min_p, repetition_penalty)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if stops and tokenizer is None:
        raise ValueError("stop strings need a tokenizer to read the text; pass tokenizer=... or use stop_ids")
    stop_set = set(tokenizer.stop_ids if stop_ids is None and tokenizer is not None else stop_ids or [])
    pad_id = tokenizer.pad_id if tokenizer is not None and tokenizer.pad_id is not None else 0

    ids, valid = prepare_prompt(prompt, tokenizer, attention_mask, pad_id)
    batch, prompt_len = ids.shape
    vocab = model.config.vocab_size
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"prompt token ids must lie in [0, {vocab}) (the model's vocabulary); "
                         f"got ids from {int(ids.min())} to {int(ids.max())}: is this the model's tokenizer?")
    context = model.config.context_length
    extra = 0 if draft_steps is None else lookahead + 1
    if prompt_len + extra >= context:
        raise ValueError(f"the prompt has {prompt_len} tokens but the model's context length is {context}; "
                         "shorten the prompt (the answer needs room too)")
    max_new_tokens = min(max_new_tokens, context - prompt_len - extra)
    depth = max(num_steps, criterion.max_steps or 0) if criterion is not None else num_steps
    device = model.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    cache = KVCache(model.config, batch, prompt_len + max_new_tokens + extra, depth, kv_budget, model.dtype, device)
    engine = Engine(model, cache, init_scale, generator, compile)
    ids, valid = ids.to(device), valid.to(device)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=device)
        seen.scatter_(1, torch.where(valid, ids, vocab), True)
        seen = seen[:, :vocab]

    if draft_steps is not None:
        from .speculative import check_speculative, speculative_chunks

        check_speculative(num_steps, draft_steps, lookahead, cache)
        if criterion is not None or warm_start or do_sample or repetition_penalty != 1.0:
            raise ValueError("speculative decoding (draft_steps) is greedy at a fixed depth: drop exit, "
                             "warm_start, sampling and repetition_penalty, or drop draft_steps")
    first = engine.forward(ids, num_steps, valid)
    prefill_seconds = time.perf_counter() - started
    if draft_steps is None:
        chunks = _plain_chunks(engine, first, sampler, seen, num_steps, criterion, warm_start)
    else:
        chunks = speculative_chunks(engine, first, num_steps, draft_steps, lookahead)

    rows = [_Row(detokenizer=_Detokenizer(tokenizer) if tokenizer is not None else None) for _ in range(batch)]
    hold = max((len(s) for s in stops), default=1) - 1  # streamed text that may still start a stop string
    shown, drafted, accepted = 0, 0, 0
    for chunk in chunks:
        drafted, accepted = drafted + chunk.drafted, accepted + chunk.accepted
        tokens = chunk.tokens.tolist()
        counts = chunk.iterations.tolist() if isinstance(chunk.iterations, Tensor) else [chunk.iterations] * batch
        for row, new, count in zip(rows, tokens, counts, strict=True):
            if row.finish_reason is None:
                _extend(row, new, count, max_new_tokens, stop_set, stops)
        end = len(rows[0].text) - (0 if rows[0].finish_reason else hold)
        if end > shown:
            yield rows[0].text[shown:end]
            shown = end
        if all(row.finish_reason is not None for row in rows):
            break
    chunks.close()
    return GenerationResult(
        tokens=[r.tokens for r in rows], iterations=[r.iterations for r in rows],
        texts=[r.text for r in rows] if tokenizer is not None else None,
        finish_reasons=[r.finish_reason or "length" for r in rows], prompt_tokens=int(valid.sum()),
        prefill_seconds=prefill_seconds, total_seconds=time.perf_counter() - started,
        cache_bytes=cache.nbytes, drafted=drafted, accepted=accepted,
    )


def _events(model: RecurrentDepthLM, prompt: Prompt, tokenizer, options: dict) -> Iterator[str]:
    """`_run` with its options checked by name first, so that a misspelt one is named, not a TypeError."""
    known = list(inspect.signature(_run).parameters)[3:]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown generation option(s) {', '.join(unknown)}; the options are: {', '.join(known)}")
    return _run(model, prompt, tokenizer, **options)


def _extend(row: _Row, new: list[int], iterations: int, limit: int, stop_ids: set[int], stops: list[str]) -> None:
    """Append a chunk's tokens to a row until a stop id, a stop string or the token limit ends it."""
    for token in new:
        row.tokens.append(token)
        row.iterations.append(iterations)
        is_stop = token in stop_ids
        full = len(row.tokens) >= limit
        if row.detokenizer is not None:
            delta = row.detokenizer.flush() if is_stop else row.detokenizer.push(token, final=full)
            row.text += delta
            tail = len(row.text) - len(delta)  # only text that this token completed can hold a new match
            hit = [i for s in stops if (i := row.text.find(s, max(0, tail - len(s) + 1))) >= 0]
            if hit:
                row.text = row.text[: min(hit)]
                is_stop = True
        if is_stop or full:
            row.finish_reason = "stop" if is_stop else "length"
            return


def generate(model: RecurrentDepthLM, prompt: Prompt, tokenizer=None, **options) -> GenerationResult:
    """Generate continuations of `prompt` (text with a tokenizer, or ids: a list, lists, or a [B, L] tensor).

    Options: num_steps (core iterations per token; the maximum when `exit` is set), init_scale,
    max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed,
    exit ('kl:5e-4', an `exits` criterion, or None), kv_budget (core iterations kept per layer),
    warm_start, stop (strings), stop_ids (default: the tokenizer's), draft_steps + lookahead
    (self-speculative decoding), attention_mask (for a padded tensor prompt), compile (torch.compile the
    per-token pieces: a one-off compile of ~50-80 s per model, then 3.4-3.9x faster decoding on a 2-core CPU).
    """
    events = _events(model, prompt, tokenizer, options)
    while True:
        try:
            next(events)
        except StopIteration as finished:
            return finished.value


class TextStream:
    """Iterate to receive text pieces as they are generated; `result` is set once the iteration ends."""

    def __init__(self, events: Iterator[str]) -> None:
        self._events = events
        self.result: GenerationResult | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._events)
        except StopIteration as finished:
            self.result = finished.value
            raise StopIteration from None


def stream(model: RecurrentDepthLM, prompt: Prompt, tokenizer, **options) -> TextStream:
    """Like `generate`, but yields the text of the (first) prompt piece by piece; needs a tokenizer."""
    if tokenizer is None:
        raise ValueError("streaming yields text and needs a tokenizer; use generate() for token ids")
    return TextStream(_events(model, prompt, tokenizer, options))
