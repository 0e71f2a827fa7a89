"""The hand-over of one request's tokens from the engine thread to its HTTP handler's event loop.

The engine calls `on_tokens` on its own thread; the update (a copy of what the request holds then)
crosses to asyncio with `call_soon_threadsafe`, where `pieces()` turns updates into text deltas. Text
that may still begin a stop string is held back until the next token decides it (the engine cuts
the text at a stop string, and streamed text cannot be taken back).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Update:
    iterations: list[int]  # of the new tokens
    text: str  # the request's whole text so far
    finish_reason: str | None


@dataclass
class Failure:
    message: str


@dataclass
class Piece:
    """What a client is sent: new text, the iterations of the tokens behind it, and the end."""

    text: str
    iterations: list[int]
    finish_reason: str | None = None


class EngineFailure(Exception):
    """The engine failed while running this request (the server keeps serving others)."""


@dataclass
class Stream:
    loop: asyncio.AbstractEventLoop
    hold: int = 0
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    iterations: list[int] = field(default_factory=list)  # every token's, as received
    text: str = ""
    finish_reason: str | None = None
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None  # perf_counter when the first token arrived here

    def on_tokens(self, request, tokens: list[int]) -> None:
        """Engine thread: post a copy of the request's state (never raises into the engine)."""
        update = Update(request.iterations[len(request.iterations) - len(tokens):] if tokens else [],
                        request.text, request.finish_reason)
        self._post(update)

    def fail(self, message: str) -> None:
        self._post(Failure(message))

    def _post(self, item: Update | Failure) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def pieces(self, timeout: float | None = None) -> AsyncIterator[Piece | None]:
        """Text deltas until the request ends; None every `timeout` seconds without news (so that the
        caller can check its client is still there); EngineFailure if the engine failed."""
        while self.finish_reason is None:
            try:
                item = await asyncio.wait_for(self.queue.get(), timeout)
            except TimeoutError:
                yield None
                continue
            if isinstance(item, Failure):
                self.finish_reason = "error"
                raise EngineFailure(item.message)
            if item.iterations and self.first_token is None:
                self.first_token = time.perf_counter()
            self.iterations += item.iterations
            self.finish_reason = item.finish_reason
            end = len(item.text) if item.finish_reason else len(item.text) - self.hold
            delta = item.text[len(self.text) : end] if end > len(self.text) else ""
            self.text += delta
            if delta or item.iterations or item.finish_reason:
                yield Piece(delta, item.iterations, item.finish_reason)

    @property
    def mean_iterations(self) -> float:
        return sum(self.iterations) / len(self.iterations) if self.iterations else 0.0
