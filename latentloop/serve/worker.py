"""The engine thread: the only place the model runs.

HTTP handlers talk to it through a command queue (submit, cancel, drain); between two engine steps the
thread runs the commands that arrived, so the scheduler is only ever touched by this thread. An
exception in a step fails the requests in it with a message and the thread keeps serving: nothing a
client sends can stop it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ..request import Request
from .stream import Stream

log = logging.getLogger("latentloop.serve")
SHUTDOWN = "the server is shutting down"


@dataclass(frozen=True)
class Snapshot:
    """The engine's state after its last step, for /metrics and /health (read from any thread)."""

    waiting: int = 0
    running: int = 0
    cache_bytes: int = 0  # K/V bytes the running rows' tokens occupy


class EngineWorker:
    """Runs `scheduler` on a background thread; at most `capacity` requests in flight (rows + queue)."""

    def __init__(self, scheduler, capacity: int) -> None:
        self.scheduler, self.capacity = scheduler, capacity
        self.snapshot = Snapshot()
        self.accepting = True
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._streams: dict[Request, Stream] = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self._deadline: float | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="latentloop-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._commands.put(lambda: None)
        self._thread.join(timeout=30)

    def reserve(self) -> bool:
        """Claim a place for a new request; False when rows and queue are all taken."""
        with self._lock:
            if self._in_flight >= self.capacity:
                return False
            self._in_flight += 1
            return True

    def submit(self, request: Request, stream: Stream) -> Future:
        """Queue a reserved request; the future fails with the engine's ValueError if it does not fit."""
        done: Future = Future()
        self._commands.put(lambda: self._submit(request, stream, done))
        return done

    def cancel(self, request: Request) -> None:
        """The client went away: free the request's row (a request already finished is left alone)."""
        self._commands.put(lambda: self._cancel(request))

    def drain(self, grace: float) -> None:
        """Stop taking requests; those in flight may run `grace` seconds more, then end as cancelled."""
        self.accepting = False
        self._commands.put(lambda: self._set_deadline(time.monotonic() + grace))

    # --- the engine thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._run_commands(wait=self.scheduler.idle)
            if self._deadline is not None and time.monotonic() >= self._deadline:
                for request in list(self._streams):
                    self._cancel(request)
            if self.scheduler.idle:
                continue
            try:
                finished = self.scheduler.step()
            except Exception as err:  # an engine fault: fail what was running, keep serving
                log.exception("engine step failed")
                self._fail_all(f"the engine failed while running this request: {type(err).__name__}: {err}")
                continue
            for request in finished:
                self._forget(request)
            self._publish()

    def _run_commands(self, wait: bool) -> None:
        try:
            command = self._commands.get(timeout=0.1) if wait else self._commands.get_nowait()
            while True:
                try:
                    command()
                except Exception:  # a command never takes the thread down
                    log.exception("engine command failed")
                command = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _submit(self, request: Request, stream: Stream, done: Future) -> None:
        try:
            self.scheduler.submit(request)
        except Exception as err:
            self._release()
            done.set_exception(err)
            return
        self._streams[request] = stream
        done.set_result(request)
        self._publish()

    def _cancel(self, request: Request) -> None:
        if request in self._streams:
            self.scheduler.cancel(request)
            self._forget(request)
            self._publish()

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)

    def _fail_all(self, message: str) -> None:
        for request, stream in list(self._streams.items()):
            request.on_tokens = None  # the stream hears of the failure, not of a cancellation
            try:
                self.scheduler.cancel(request)
            except Exception:
                log.exception("could not free the row of a failed request")
            stream.fail(message)
            self._forget(request)
        self._publish()

    def _forget(self, request: Request) -> None:
        if self._streams.pop(request, None) is not None:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _publish(self) -> None:
        s = self.scheduler
        cache = s.engine.cache
        used = sum(cache.lengths[r.row] for r in s.running)
        self.snapshot = Snapshot(len(s.waiting), len(s.running), used * cache.bytes_per_token)
