"""Building a server from its settings and running it under uvicorn, with a graceful SIGTERM: stop
accepting, let requests in flight run `grace_seconds` more, then end them with a final event."""

from __future__ import annotations

import importlib.util
import socket

from .app import Service, create_app
from .protocol import Limits
from .settings import ServeSettings, build_scheduler
from .worker import EngineWorker


def open_service(settings: ServeSettings, model=None, tokenizer=None) -> Service:
    """Load the model and tokenizer (unless given) and build the engine thread (not started: the app's
    lifespan starts it)."""
    from ..checkpoint import load_model, resolve_model_dir
    from ..tokenizer import load_tokenizer

    if tokenizer is None:  # first: a missing tokenizer.json is named before the weights load
        tokenizer = load_tokenizer(resolve_model_dir(settings.model))
    if model is None:
        model = load_model(settings.model, dtype=settings.dtype, device=settings.device)
    scheduler = build_scheduler(model, settings)
    cache = scheduler.engine.cache
    limits = Limits(name=settings.name, vocab_size=model.config.vocab_size,
                    positions=min(cache.max_length, model.config.context_length),
                    max_num_steps=settings.max_num_steps,
                    default_num_steps=min(model.config.mean_recurrence, settings.max_num_steps),
                    chat_refusal=chat_refusal(settings.model, tokenizer))
    worker = EngineWorker(scheduler, capacity=cache.rows + settings.max_queue)
    return Service(limits, tokenizer, worker, settings.api_key)


def chat_refusal(name: str, tokenizer) -> str | None:
    """Why this model cannot answer chat requests (the checks of `latentloop chat`); None when it can."""
    from ..cli.chat import check_chat_model

    try:
        check_chat_model(name, tokenizer)
    except ValueError as err:
        return str(err).split(". To chat")[0]
    return None


def uvicorn_server(service: Service, settings: ServeSettings, log_level: str = "info"):
    """A uvicorn server whose SIGTERM (or Ctrl-C) first drains the engine."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            service.worker.drain(settings.grace_seconds)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(create_app(service), host=settings.host, port=settings.port, log_level=log_level,
                            timeout_graceful_shutdown=int(settings.grace_seconds) + 5)
    return DrainingServer(config)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: a free one, read back with getsockname). It listens at once, so
    clients that connect while the app starts wait in the backlog instead of being refused."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def require_serve_extra() -> None:
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"the server needs the serve extra ({', '.join(missing)} missing): "
                         "pip install 'latentloop[serve]'")


def serve(settings: ServeSettings) -> None:
    """Run until SIGTERM or Ctrl-C."""
    require_serve_extra()
    service = open_service(settings)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    print(f"latentloop serve: {settings.name} on http://{host}:{port} (chat page at /, API under /v1)", flush=True)
    uvicorn_server(service, settings).run(sockets=[sock])
