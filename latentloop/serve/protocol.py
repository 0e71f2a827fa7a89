"""Request bodies -> checked jobs for the engine. Every refusal is a 400 naming the field and the fix,
raised here in the HTTP handler, before anything reaches the engine thread.

The fields are OpenAI's (`model`, `prompt` or `messages`, `max_tokens`, `temperature`, `top_p`, `stop`,
`seed`, `stream`, `stream_options`, `n`) plus latentloop's at the top level of the body (the `openai`
client's `extra_body`): `top_k`, `min_p`, `repetition_penalty`, `num_steps`, `exit`, `init_scale`,
`warm_start`, and `sampler: "parallel"` with the parallel sampler's settings (`inner_steps`, `freeze`,
`epsilon`, `noise`, `embed_ema`, `headway`, `max_wavefront`; it needs a server run with --kv-budget 1).
Greedy (temperature 0) is the default, as in `latentloop generate`; a greedy request
without a seed uses seed 0 (the initial latent is random), so it answers exactly as offline
`latentloop.generate(..., seed=0)` does. Under greedy decoding top_p, top_k and min_p have no effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..exits import parse_exit
from ..sampling import Sampler
from .errors import APIError, bad_request

MAX_CHARS_PER_TOKEN = 64  # a text longer than this per position cannot fit: refused before it is tokenized
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat answers may fill the context
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# OpenAI fields this server cannot honour, with the value that means "not used"
UNSUPPORTED = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
               "best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0),
               "frequency_penalty": (None, 0), "tools": (None, []), "functions": (None, [])}


@dataclass(frozen=True)
class Limits:
    """What the served model and its cache allow, and what a request gets by default."""

    name: str
    vocab_size: int
    positions: int  # prompt + answer tokens one row holds (the model's context or the cache row, the smaller)
    max_num_steps: int
    default_num_steps: int
    chat_refusal: str | None = None  # why the model cannot chat (None: it can)


@dataclass
class Job:
    """One checked request: the prompt's ids and the keyword arguments of its `Request`."""

    chat: bool
    prompt: list[int]
    options: dict = field(default_factory=dict)  # Request(...) keywords but prompt, tokenizer and on_tokens
    stream: bool = False
    include_usage: bool = False
    hold: int = 0  # characters of streamed text held back: they may still begin a stop string


class Body:
    """The fields of a JSON body, read by expected type: a wrong one is a 400 that names it."""

    def __init__(self, data: object) -> None:
        if not isinstance(data, dict):
            raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
        self.data = data

    def get(self, name: str, default=None):
        value = self.data.get(name)
        return default if value is None else value

    def integer(self, name: str, default: int | None = None, minimum: int | None = None) -> int | None:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"{name} must be an integer, got {value!r}", name)
        if minimum is not None and value < minimum:
            raise bad_request(f"{name} must be >= {minimum}, got {value}", name)
        return value

    def number(self, name: str, default: float | None = None) -> float | None:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad_request(f"{name} must be a finite number, got {value!r}", name)
        return float(value)

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise bad_request(f"{name} must be true or false, got {value!r}", name)
        return value


def check_model(body: Body, limits: Limits) -> None:
    """`model` may be left out; given, it must be the one this server serves (404 otherwise)."""
    name = body.get("model")
    if name is None:
        return
    if not isinstance(name, str):
        raise bad_request(f"model must be a string (the served model's name), got {name!r}", "model")
    if name != limits.name:
        raise APIError(404, f"the model {name!r} is not served here; this server serves {limits.name!r} "
                            "(see GET /v1/models)", "model", "model_not_found")


def parse_completion(data: object, tokenizer, limits: Limits) -> Job:
    body = Body(data)
    check_model(body, limits)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("prompt is missing: send the text to continue (or a list of token ids)", "prompt")
    return _job(body, False, _completion_prompt(prompt, tokenizer, limits), limits, tokenizer)


def parse_chat(data: object, tokenizer, limits: Limits) -> Job:
    body = Body(data)
    check_model(body, limits)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {role, content} objects", "messages")
    if limits.chat_refusal is not None:
        raise bad_request(f"{limits.chat_refusal}; send a plain prompt to POST /v1/completions instead", "messages")
    turns = [_message(i, m) for i, m in enumerate(messages)]
    prompt = _encode(tokenizer, tokenizer.chat_prompt(turns), "messages", limits)
    return _job(body, True, prompt, limits, tokenizer)


def _completion_prompt(prompt: object, tokenizer, limits: Limits) -> list[int]:
    """A text, a list of one text, token ids, or a list of one list of ids."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("prompt is empty; give at least one character to continue", "prompt")
        return _encode(tokenizer, prompt, "prompt", limits)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        bad = [t for t in prompt if not 0 <= t < limits.vocab_size]
        if bad:
            raise bad_request(f"prompt token ids must lie in [0, {limits.vocab_size}) (the model's vocabulary); "
                              f"got {bad[0]}", "prompt")
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str | list) for p in prompt):
        raise bad_request(f"prompt holds {len(prompt)} prompts; this server answers one prompt per request: "
                          "send them as separate (concurrent) requests", "prompt")
    raise bad_request("prompt must be a non-empty string or a non-empty list of token ids", "prompt")


def _message(i: int, message: object) -> dict[str, str]:
    """One chat turn: a role and text content (a string, or a list of {"type": "text"} parts)."""
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise bad_request(f"{where} must be an object with role and content, got {message!r}", where)
    role, content = message.get("role"), message.get("content")
    if role not in CHAT_ROLES:
        raise bad_request(f"{where}.role must be one of {', '.join(sorted(CHAT_ROLES))}, got {role!r}", f"{where}.role")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise bad_request(f"{where}.content must be a string (or a list of text parts), got {content!r}",
                          f"{where}.content")
    return {"role": CHAT_ROLES[role], "content": content}


def _encode(tokenizer, text: str, param: str, limits: Limits) -> list[int]:
    if len(text) > limits.positions * MAX_CHARS_PER_TOKEN:
        raise bad_request(f"the {param} has {len(text)} characters, far more than the {limits.positions} tokens "
                          "a request holds (prompt and answer); shorten the prompt", param)
    try:
        return tokenizer.encode_prompt(text)
    except ValueError as err:  # a character the vocabulary cannot spell
        raise bad_request(str(err), param) from None


def _job(body: Body, chat: bool, prompt: list[int], limits: Limits, tokenizer) -> Job:
    where = "messages" if chat else "prompt"
    for name, neutral in UNSUPPORTED.items():
        if name in body.data and body.data[name] not in neutral:
            raise bad_request(f"{name} is not supported by this server; leave it out", name)
    n = body.integer("n", 1)
    if n != 1:
        raise bad_request(f"n = {n}: this server returns one choice per request; send n = 1 "
                          "(or several requests)", "n")
    room = limits.positions - len(prompt)
    if room < 1:
        raise bad_request(f"the prompt has {len(prompt)} tokens but the server holds {limits.positions} per "
                          "request (prompt and answer); shorten the prompt", where)
    max_tokens = body.integer("max_completion_tokens" if chat and "max_completion_tokens" in body.data
                              else "max_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = room if chat else min(COMPLETION_MAX_TOKENS, room)
    elif max_tokens > room:
        raise bad_request(f"max_tokens {max_tokens} does not fit: the prompt has {len(prompt)} tokens and a "
                          f"request holds {limits.positions}; ask for at most {room}", "max_tokens")
    num_steps = body.integer("num_steps", limits.default_num_steps, minimum=1)
    if num_steps > limits.max_num_steps:
        raise bad_request(f"num_steps {num_steps} is above this server's maximum of {limits.max_num_steps} "
                          "iterations per token (its --max-num-steps); ask for fewer", "num_steps")
    stream = body.boolean("stream")
    usage = _stream_options(body, stream)
    stop = _stop(body)
    return Job(chat=chat, prompt=prompt, stream=stream, include_usage=usage,
               hold=max((len(s) for s in stop), default=1) - 1,
               options=dict(max_new_tokens=max_tokens, num_steps=num_steps, exit=_exit(body),
                            sampler=_sampler(body), init_scale=_init_scale(body), seed=_seed(body),
                            warm_start=body.boolean("warm_start"), stop=stop, stop_ids=tokenizer.stop_ids,
                            parallel=_parallel(body)))


def _stream_options(body: Body, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise bad_request("stream_options only apply to a streamed answer: set stream to true", "stream_options")
    if not isinstance(options, dict):
        raise bad_request(f"stream_options must be an object such as {{\"include_usage\": true}}, got {options!r}",
                          "stream_options")
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise bad_request(f"stream_options.include_usage must be true or false, got {usage!r}",
                          "stream_options.include_usage")
    return usage


def _stop(body: Body) -> list[str]:
    stop = body.get("stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_request(f"stop must be a string or a list of strings, got {stop!r}", "stop")
    if any(not s for s in stop):
        raise bad_request('stop holds an empty string, which would stop before the first token; remove it', "stop")
    return stop


def _exit(body: Body):
    spec = body.get("exit")
    if spec is not None and not isinstance(spec, str):
        raise bad_request(f"exit must be a string such as 'kl:5e-4' (or null for a fixed depth), got {spec!r}", "exit")
    try:
        return parse_exit(spec)
    except ValueError as err:
        raise bad_request(str(err), "exit") from None


def _sampler(body: Body) -> Sampler:
    temperature = body.number("temperature", 0.0)
    if temperature < 0:
        raise bad_request(f"temperature must be >= 0 (0 = greedy), got {temperature}", "temperature")
    top_p, min_p = body.number("top_p"), body.number("min_p")
    top_k, penalty = body.integer("top_k", minimum=1), body.number("repetition_penalty", 1.0)
    for name, value, ok, rule in (("top_p", top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("min_p", min_p, lambda v: 0 <= v <= 1, "in [0, 1]"),
                                  ("repetition_penalty", penalty, lambda v: v > 0, "> 0 (1 = off)")):
        if value is not None and not ok(value):
            raise bad_request(f"{name} must be {rule}, got {value}", name)
    if temperature == 0:
        return Sampler(repetition_penalty=penalty)
    return Sampler(True, temperature, top_k, top_p, min_p, penalty)


def _parallel(body: Body):
    """`sampler: "parallel"` and its settings (top level, as in `latentloop.generate`); None: plain decoding."""
    from ..generate import PARALLEL_SETTINGS
    from ..parallel import Parallel

    sampler = body.get("sampler", "plain")
    if sampler not in ("plain", "parallel"):
        raise bad_request(f"sampler must be 'plain' or 'parallel', got {sampler!r}", "sampler")
    given = {name: body.data[name] for name in PARALLEL_SETTINGS if body.data.get(name) is not None}
    if sampler == "plain":
        if given:
            raise bad_request(f"{', '.join(given)}: settings of the parallel sampler only; add \"sampler\": "
                              "\"parallel\"", next(iter(given)))
        return None
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, str if name == "freeze" else int | float):
            raise bad_request(f"{name} must be {'a string' if name == 'freeze' else 'a number'}, got {value!r}",
                              name)
    try:
        return Parallel(**given)
    except ValueError as err:
        raise bad_request(str(err), next((n for n in given if str(err).startswith(n)), "sampler")) from None


def _init_scale(body: Body) -> float:
    scale = body.number("init_scale", 1.0)
    if scale < 0:
        raise bad_request(f"init_scale must be >= 0 (0 = start the latent from zeros), got {scale}", "init_scale")
    return scale


def _seed(body: Body) -> int | None:
    """The given seed; greedy requests default to 0 (repeatable answers), sampled ones to fresh randomness."""
    seed = body.integer("seed")
    if seed is None and not body.number("temperature", 0.0):
        return 0
    if seed is not None and not 0 <= seed < 2**63:
        raise bad_request(f"seed must lie in [0, 2**63), got {seed}", "seed")
    return seed
