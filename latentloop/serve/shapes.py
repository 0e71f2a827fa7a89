"""Responses in OpenAI's shape: completions, chat completions, their streamed chunks, and usage.

latentloop adds `usage.mean_iterations` (core iterations per generated token) and, in every streamed
chunk's choice, `iterations`: those of the tokens behind the chunk's text (the chat page colours by it).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field

from .stream import Piece


@dataclass
class Answer:
    """The identity of one response, shared by all its chunks."""

    chat: bool
    model: str
    prompt_tokens: int
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def usage(self, iterations: list[int]) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(iterations),
                "total_tokens": self.prompt_tokens + len(iterations),
                "mean_iterations": round(sum(iterations) / len(iterations), 3) if iterations else 0.0}

    def full(self, text: str, finish_reason: str, iterations: list[int]) -> dict:
        """The whole answer at once (stream false)."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._head("chat.completion" if self.chat else "text_completion") | {
            "choices": [choice], "usage": self.usage(iterations)}

    def chunk(self, piece: Piece, first: bool = False, include_usage: bool = False) -> dict:
        """One streamed piece; the first chat chunk names the assistant's role."""
        if self.chat:
            delta = {"role": "assistant", "content": piece.text} if first else {"content": piece.text}
            choice = {"index": 0, "delta": delta, "finish_reason": piece.finish_reason}
        else:
            choice = {"index": 0, "text": piece.text, "logprobs": None, "finish_reason": piece.finish_reason}
        choice["iterations"] = piece.iterations
        body = self._head("chat.completion.chunk" if self.chat else "text_completion") | {"choices": [choice]}
        if include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, iterations: list[int]) -> dict:
        """The last chunk of a stream with `stream_options.include_usage`: no choices, the usage."""
        return self._head("chat.completion.chunk" if self.chat else "text_completion") | {
            "choices": [], "usage": self.usage(iterations)}


def event(body: dict | str) -> str:
    """One server-sent event."""
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


DONE = event("[DONE]")
