"""Prometheus metrics of one server, in a registry of its own (several servers may share a process)."""

from __future__ import annotations

from collections.abc import Callable

from .worker import Snapshot

ITERATION_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("latentloop_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.finished_requests = Counter("latentloop_finished_requests", "requests ended, by finish reason "
                                         "(cancelled: the client went away or the server shut down)",
                                         ["finish_reason"], registry=registry)
        self.prompt_tokens = Counter("latentloop_prompt_tokens", "prompt tokens of admitted requests",
                                     registry=registry)
        self.generated_tokens = Counter("latentloop_generated_tokens", "tokens generated", registry=registry)
        self.iterations = Histogram("latentloop_iterations_per_token", "core iterations each generated token ran",
                                    buckets=ITERATION_BUCKETS, registry=registry)
        self.first_token = Histogram("latentloop_time_to_first_token_seconds",
                                     "from a request's arrival to its first token", buckets=SECONDS_BUCKETS,
                                     registry=registry)
        for name, doc, read in (("queue_length", "requests waiting for a free row", lambda s: s.waiting),
                                ("running_rows", "requests holding a cache row", lambda s: s.running),
                                ("cache_bytes_in_use", "K/V cache bytes the running requests' tokens occupy",
                                 lambda s: s.cache_bytes)):
            Gauge(f"latentloop_{name}", doc, registry=registry).set_function(lambda read=read: read(snapshot()))

    def answered(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def generated(self, iterations: list[int]) -> None:
        """New tokens, counted as they are sent."""
        self.generated_tokens.inc(len(iterations))
        for count in iterations:
            self.iterations.observe(count)

    def finished(self, finish_reason: str, prompt_tokens: int, first_token_seconds: float | None) -> None:
        """One request's accounting, once it has ended."""
        self.finished_requests.labels(finish_reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        if first_token_seconds is not None:
            self.first_token.observe(first_token_seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
