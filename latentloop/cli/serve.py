"""`latentloop serve MODEL`: an OpenAI-compatible HTTP server with a chat page."""

from __future__ import annotations

import argparse

DESCRIPTION = """Serve a model over HTTP with OpenAI's API: POST /v1/completions, POST /v1/chat/completions
(huginn's chat format), GET /v1/models, GET /health, GET /metrics (Prometheus), and at / a chat page
that colours every token by the iterations it used. One background thread runs the engine, batching
up to --max-batch requests; latentloop's options (num_steps, exit, init_scale, warm_start, top_k,
min_p, repetition_penalty) go at the top level of the JSON body (the openai client's extra_body).
Greedy unless temperature > 0; a greedy request without a seed uses seed 0, as `latentloop generate`.
SIGTERM stops accepting, lets requests in flight run --grace-seconds more, then ends them.
Needs the serve extra: pip install 'latentloop[serve]'.

examples:
  latentloop serve default                               # the bundled model on http://127.0.0.1:8000
  latentloop serve path/to/huginn-0125 --max-batch 8 --kv-budget 8 --max-cache-gb 20 --api-key s3cret
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "73BACbb6baa9Bbb7b=", "max_tokens": 4, "num_steps": 32, "exit": "kl:5e-4"}'
"""


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a chat page", description=DESCRIPTION,
                       formatter_class=Formatter)
    p.add_argument("model", nargs="?", default="default", help="checkpoint directory, 'default' or hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one)")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together (rows of the KV cache)")
    p.add_argument("--max-num-steps", type=int, default=128, help="the most iterations per token a request may ask")
    p.add_argument("--kv-budget", type=int, default=None, help="keep K/V of only this many iterations per core layer")
    p.add_argument("--max-cache-gb", type=float, default=None,
                   help="cap the KV cache at this many GiB (fewer rows than --max-batch if need be)")
    p.add_argument("--max-length", type=int, default=None,
                   help="prompt + answer tokens per request (default: the model's context length)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait for a free row; beyond them the server answers 429")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1")
    p.add_argument("--served-name", default=None, help="the model name clients use (default: MODEL)")
    p.add_argument("--compile", action="store_true", help="torch.compile the per-token pieces (a one-off compile)")
    p.add_argument("--prefill-chunk", type=int, default=256,
                   help="prompt tokens one request prefills per engine step (running requests decode meanwhile)")
    p.add_argument("--grace-seconds", type=float, default=10.0,
                   help="on SIGTERM, how long requests in flight may still run")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: as stored")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 is often fastest on a busy small CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve.server import serve
    from ..serve.settings import ServeSettings
    from . import check_device

    settings = ServeSettings(
        model=args.model, host=args.host, port=args.port, max_batch=args.max_batch, max_num_steps=args.max_num_steps,
        kv_budget=args.kv_budget, max_cache_gb=args.max_cache_gb, max_length=args.max_length,
        max_queue=args.max_queue, api_key=args.api_key, compile=args.compile, served_name=args.served_name,
        prefill_chunk=args.prefill_chunk, grace_seconds=args.grace_seconds, device=check_device(args.device),
        dtype=args.dtype)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    serve(settings)
    return 0
