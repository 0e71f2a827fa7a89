"""Generation: `generate` and `stream` as clients of the engine (`engine.py`), so there is one decode path.

A call turns its prompt (text, ids, a padded batch) into one `Request` per row, submits them to a
`Scheduler` whose cache has a row per request, and steps it until every row is done, streaming the
text of row 0 as it arrives. Depth, early exit, KV budget, warm start, sampling, stops and
self-speculative drafting are options of the request; `compile` and `prefill_chunk` of the engine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from .cache import KVCache
from .engine import Engine, Scheduler
from .exits import ExitCriterion, parse_exit
from .model import RecurrentDepthLM
from .parallel import Parallel
from .request import Request, check_limits
from .sampling import Sampler

PARALLEL_SETTINGS = ("inner_steps", "freeze", "epsilon", "noise", "embed_ema", "headway", "max_wavefront")
Prompt = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | Tensor


@dataclass
class GenerateOptions:
    """Every option of `generate`, checked once: a misspelt one is named, a bad value explained."""

    num_steps: int = 32
    init_scale: float = 1.0
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    exit: str | ExitCriterion | None = None
    kv_budget: int | None = None
    warm_start: bool = False
    stop: str | Sequence[str] | None = None
    stop_ids: Sequence[int] | None = None
    draft_steps: int | None = None
    lookahead: int = 4
    attention_mask: Tensor | None = None
    compile: bool = False
    prefill_chunk: int | None = None
    prompt_exit: bool = False
    sampler: str = "plain"  # or "parallel": the diffusion-forcing sampler, with the settings below
    inner_steps: int | None = None
    freeze: str | None = None
    epsilon: float | None = None
    noise: float | None = None
    embed_ema: float | None = None
    headway: int | None = None
    max_wavefront: int | None = None
    sampling: Sampler = field(init=False, repr=False)
    parallel: Parallel | None = field(init=False, repr=False)

    @classmethod
    def from_kwargs(cls, options: dict) -> GenerateOptions:
        known = [f.name for f in fields(cls) if f.init]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown generation option(s) {', '.join(unknown)}; the options are: {', '.join(known)}")
        return cls(**options)

    def __post_init__(self) -> None:
        check_limits(self.num_steps, self.max_new_tokens)
        self.exit = parse_exit(self.exit)
        self.sampling = Sampler(self.do_sample, self.temperature, self.top_k, self.top_p, self.min_p,
                                self.repetition_penalty)
        settings = {name: getattr(self, name) for name in PARALLEL_SETTINGS if getattr(self, name) is not None}
        if self.sampler not in ("plain", "parallel"):
            raise ValueError(f"sampler must be 'plain' or 'parallel', got {self.sampler!r}")
        if settings and self.sampler != "parallel":
            raise ValueError(f"{', '.join(settings)}: settings of the parallel sampler only; add sampler='parallel' "
                             "(--sampler parallel)")
        self.parallel = Parallel(**settings) if self.sampler == "parallel" else None
        if self.parallel is not None and self.kv_budget is None:
            self.kv_budget = 1  # committed tokens keep the K/V of their last iteration
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def depth(self) -> int:
        return max(self.num_steps, self.exit.max_steps or 0) if self.exit is not None else self.num_steps

    def request(self, prompt: list[int], tokenizer, max_new_tokens: int) -> Request:
        stop_ids = self.stop_ids if self.stop_ids is not None else tokenizer.stop_ids if tokenizer is not None else []
        return Request(prompt, max_new_tokens=max_new_tokens, num_steps=self.num_steps, exit=self.exit,
                       sampler=self.sampling, init_scale=self.init_scale, seed=self.seed, warm_start=self.warm_start,
                       stop_ids=stop_ids, stop=self.stop, draft_steps=self.draft_steps, lookahead=self.lookahead,
                       prompt_exit=self.prompt_exit, parallel=self.parallel, tokenizer=tokenizer)


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


def _run(model: RecurrentDepthLM, prompt: Prompt, tokenizer, options: GenerateOptions) -> Iterator[str]:
    """Submit one request per row, step the engine until all are done; yields row 0's text as it grows
    and returns the GenerationResult."""
    model = getattr(model, "latentloop_model", model)  # a latentloop.hf model: its RecurrentDepthLM
    started = time.perf_counter()
    pad_id = tokenizer.pad_id if tokenizer is not None and tokenizer.pad_id is not None else 0
    ids, valid = prepare_prompt(prompt, tokenizer, options.attention_mask, pad_id)
    rows = [row[mask].tolist() for row, mask in zip(ids, valid, strict=True)]
    context, longest = model.config.context_length, max(len(r) for r in rows)
    extra = 0 if options.draft_steps is None else options.lookahead + 1
    if longest + extra >= context:
        raise ValueError(f"the prompt has {longest} tokens but the model's context length is {context}; "
                         "shorten the prompt (the answer needs room too)")
    max_new_tokens = min(options.max_new_tokens, context - longest - extra)
    requests = [options.request(r, tokenizer, max_new_tokens) for r in rows]
    cache = KVCache(model.config, len(rows), max(r.positions_needed for r in requests), options.depth,
                    options.kv_budget, model.dtype, model.device)
    scheduler = Scheduler(Engine(model, cache, compile=options.compile), prefill_chunk=options.prefill_chunk)
    for request in requests:
        scheduler.submit(request)
    hold = max((len(s) for s in options.stop), default=1) - 1  # streamed text that may still start a stop string
    shown, first = 0, requests[0]
    while not scheduler.idle:
        scheduler.step()
        end = len(first.text) - (0 if first.finished else hold)
        if end > shown:
            yield first.text[shown:end]
            shown = end
    first_tokens = max(r.first_token_time for r in requests)
    return GenerationResult(
        tokens=[r.tokens for r in requests], iterations=[r.iterations for r in requests],
        texts=[r.text for r in requests] if tokenizer is not None else None,
        finish_reasons=[r.finish_reason for r in requests], prompt_tokens=sum(len(r) for r in rows),
        prefill_seconds=first_tokens - started, total_seconds=time.perf_counter() - started,
        cache_bytes=cache.nbytes, drafted=sum(r.drafted for r in requests),
        accepted=sum(r.accepted for r in requests),
    )


def generate(model: RecurrentDepthLM, prompt: Prompt, tokenizer=None, **options) -> GenerationResult:
    """Generate continuations of `prompt` (text with a tokenizer, or ids: a list, lists, or a [B, L] tensor).

    Options: num_steps (core iterations per token; the maximum when `exit` is set), init_scale,
    max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed (each row's
    own generator: a row gives the same tokens alone or in a batch), exit ('kl:5e-4', an `exits`
    criterion, or None; it also decides the prompt's last token, which gives the first new token),
    kv_budget (core iterations kept per layer), warm_start, stop (strings), stop_ids (default: the
    tokenizer's), draft_steps + lookahead (self-speculative decoding), attention_mask (for a padded
    tensor prompt), compile (torch.compile the per-token pieces: a one-off compile of ~50-80 s per model,
    then several times faster decoding on a CPU), prefill_chunk (prompt tokens per forward; 1 runs every
    prompt token as a decode step, under the kv_budget ring), prompt_exit (the exit criterion decides
    every prompt token's depth too, each prompt token decoded on its own: the depth of the whole
    computation, not only of the new tokens, follows the criterion), sampler ('plain', or 'parallel':
    the diffusion-forcing sampler refining a wavefront of positions at once, `parallel.py`, with
    inner_steps, freeze, epsilon, noise, embed_ema, headway, max_wavefront; it runs on a one-slot
    KV ring, so kv_budget defaults to 1 there).
    """
    events = _run(model, prompt, tokenizer, GenerateOptions.from_kwargs(options))
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
    return TextStream(_run(model, prompt, tokenizer, GenerateOptions.from_kwargs(options)))
