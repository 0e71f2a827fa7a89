"""The HTTP routes. Handlers parse and check a request, hand it to the engine thread and relay its
tokens; they never run the model, so the event loop stays free for every other client.

No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at run time, and
they name classes that `create_app` imports (fastapi is optional, so it is imported only there)."""

import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files

from ..request import Request
from .errors import APIError, bad_request
from .metrics import Metrics
from .protocol import Body, Job, Limits, check_model, parse_chat, parse_completion
from .shapes import DONE, Answer, event
from .stream import EngineFailure, Stream
from .worker import SHUTDOWN, EngineWorker


@dataclass
class Service:
    """Everything the routes need: the model's limits and tokenizer, the engine thread, the metrics."""

    limits: Limits
    tokenizer: object
    worker: EngineWorker
    api_key: str | None = None
    keepalive_seconds: float = 2.0  # how often a quiet stream sends an SSE comment, and a client is looked for
    metrics: Metrics = field(init=False)
    started: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: self.worker.snapshot)


def create_app(service: Service):
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    limits, tokenizer, worker, metrics = service.limits, service.tokenizer, service.worker, service.metrics
    page = files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="latentloop", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def endpoint(http: HTTPRequest) -> str:
        """The route's template, not the path: a client cannot grow the metrics with made-up paths."""
        route = http.scope.get("route")
        return getattr(route, "path", "unmatched")

    @app.exception_handler(APIError)
    async def api_error(http: HTTPRequest, err: APIError):
        metrics.answered(endpoint(http), err.status)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def internal_error(http: HTTPRequest, err: Exception):  # a bug: still OpenAI's shape, with its name
        return await api_error(http, APIError(500, f"internal error: {type(err).__name__}: {err}",
                                              code="internal_error"))

    @app.exception_handler(HTTPException)
    async def http_error(http: HTTPRequest, err: HTTPException):
        message = f"{http.method} {http.url.path}: {err.detail}; the API is under /v1 (see GET /v1/models)"
        return await api_error(http, APIError(err.status_code, message))

    def authorize(http: HTTPRequest) -> None:
        if service.api_key is None:
            return
        given = http.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {service.api_key}".encode()):
            what = "no API key was sent" if not given else "the API key is wrong"
            raise APIError(401, f"{what}: send the server's key (--api-key) as 'Authorization: Bearer KEY' "
                                "(the openai client's api_key)", code="invalid_api_key")

    async def read_json(http: HTTPRequest) -> object:
        try:
            return await http.json()
        except ValueError as err:
            raise bad_request(f"the request body is not valid JSON ({err}); send a JSON object") from None

    async def answer(http: HTTPRequest, parse):
        arrived = time.perf_counter()
        authorize(http)
        job: Job = await run_in_threadpool(parse, await read_json(http), tokenizer, limits)  # tokenizing
        if not worker.accepting:
            raise APIError(503, f"{SHUTDOWN}; send the request to another server", code="server_shutting_down")
        stream = Stream(asyncio.get_running_loop(), hold=job.hold, started=arrived)
        try:
            request = Request(job.prompt, tokenizer=tokenizer, on_tokens=stream.on_tokens, **job.options)
        except ValueError as err:
            raise bad_request(str(err)) from None
        if not worker.reserve():
            raise APIError(429, f"the server is full ({worker.capacity} requests running or queued: --max-batch "
                                "rows plus --max-queue waiting); retry shortly", code="queue_full")
        try:
            await asyncio.wrap_future(worker.submit(request, stream))
        except ValueError as err:
            raise bad_request(str(err)) from None
        except asyncio.CancelledError:
            worker.cancel(request)
            raise
        reply = Answer(job.chat, limits.name, len(job.prompt))
        if job.stream:
            metrics.answered(endpoint(http), 200)
            return StreamingResponse(events(request, stream, reply, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await whole(http, request, stream, reply))

    async def whole(http: HTTPRequest, request: Request, stream: Stream, reply: Answer) -> dict:
        checked = time.monotonic()
        try:
            async for piece in stream.pieces(timeout=service.keepalive_seconds):
                if piece is not None:
                    metrics.generated(piece.iterations)
                if time.monotonic() - checked >= service.keepalive_seconds:  # is the client still there?
                    checked = time.monotonic()
                    if await http.is_disconnected():
                        worker.cancel(request)
                        break
        except EngineFailure as err:
            raise APIError(500, str(err), code="engine_error") from None
        finally:
            account(request, stream)
        metrics.answered(endpoint(http), 200)
        return reply.full(stream.text, stream.finish_reason or "cancelled", stream.iterations)

    async def events(request: Request, stream: Stream, reply: Answer, job: Job):
        first = True
        try:
            async for piece in stream.pieces(timeout=service.keepalive_seconds):
                if piece is None:
                    yield ": keep-alive\n\n"
                    continue
                metrics.generated(piece.iterations)
                yield event(reply.chunk(piece, first, job.include_usage))
                first = False
            if job.include_usage:
                yield event(reply.usage_chunk(stream.iterations))
        except EngineFailure as err:
            yield event(APIError(500, str(err), code="engine_error").body())
        finally:
            if stream.finish_reason is None:  # the client went away: free its row
                worker.cancel(request)
            account(request, stream)
        yield DONE

    def account(request: Request, stream: Stream) -> None:
        waited = None if stream.first_token is None else stream.first_token - stream.started
        metrics.finished(stream.finish_reason or "cancelled", len(request.prompt), waited)

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest):
        return await answer(http, parse_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HTTPRequest):
        return await answer(http, parse_chat)

    card = {"id": limits.name, "object": "model", "created": service.started, "owned_by": "latentloop",
            "chat": limits.chat_refusal is None, "max_num_steps": limits.max_num_steps,
            "default_num_steps": limits.default_num_steps, "max_positions": limits.positions}

    @app.get("/v1/models")
    async def models(http: HTTPRequest):
        authorize(http)
        metrics.answered(endpoint(http), 200)
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name:path}")
    async def model(http: HTTPRequest, name: str):
        authorize(http)
        check_model(Body({"model": name}), limits)
        metrics.answered(endpoint(http), 200)
        return card

    @app.get("/health")
    async def health():
        snapshot = worker.snapshot
        status = "ok" if worker.accepting else "shutting down"
        return JSONResponse({"status": status, "model": limits.name, "running": snapshot.running,
                             "waiting": snapshot.waiting}, status_code=200 if worker.accepting else 503)

    @app.get("/metrics")
    async def prometheus():
        content, kind = metrics.render()
        return Response(content, media_type=kind)

    @app.get("/")
    async def chat_page():
        return HTMLResponse(page)

    return app
