"""`latentloop serve` under N concurrent streaming clients; prints one JSON object.

For each model (the bundled one, and a random one at hidden 256 with 2-4-2 layers and the bundled
tokenizer), a server is started on 127.0.0.1 (a free port) in a subprocess, and a fixed workload of
greedy requests (pointer-style prompts of 8-40 characters; num_steps from {4, 8, 16, 32}, every
other request with exit kl:5e-4) is sent by N concurrent streaming clients (loopback only; each
level bounded in requests and time). Reported per N: aggregate tokens/s, time to first token and
inter-chunk latency (p50, p99), errors, requests lost (a stream that ended without its final chunk),
answers that differ from offline `latentloop.generate`, and the ratio to sequential offline
`generate` on the same requests (measured here, once per model). The machine's load average is
recorded beside each figure: on a shared machine, other work moves them. `projections_batching_bound`:
how much cheaper per row one core iteration's projections get at 16 rows than at one, measured in the
same run (`decode.projection_batching_bound`), what batching can give where they dominate.

    python benchmarks/serve.py            # N = 1, 8, 16, 32, 64; 256 requests at 32 and 64 streams
    python benchmarks/serve.py --quick    # N = 1, 16, 64 on 64 requests of up to 8 tokens
    python benchmarks/serve.py --models random_h256 --levels 1:16,16:64 --max-tokens 64   # decode-heavy
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from decode import projection_batching_bound

from latentloop import ModelConfig, RecurrentDepthLM, generate, load_model
from latentloop.tokenizer import load_tokenizer

DEPTHS = (4, 8, 16, 32)
MODELS = ("bundled", "random_h256")
POINTER_CHARS = "0123456789abcABC"


def parse_levels(text: str) -> list[tuple[int, int]]:
    """'1:16,16:64' -> [(1, 16), (16, 64)]: concurrent streams and requests per level."""
    try:
        levels = [tuple(int(n) for n in part.split(":")) for part in text.split(",")]
    except ValueError:
        levels = []
    if not levels or any(len(level) != 2 or min(level) < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"levels look like 1:16,16:64 (streams:requests, both >= 1), got {text!r}")
    return levels


def random_model(directory: Path) -> Path:
    """A random hidden-256 model that speaks the bundled tokenizer (no stop it knows of: it runs to its limit)."""
    tokenizer = load_tokenizer("default")
    config = ModelConfig(hidden_size=256, num_heads=4, intermediate_size=704, vocab_size=tokenizer.vocab_size,
                         context_length=256, n_prelude=2, n_core=4, n_coda=2, mean_recurrence=32)
    model = RecurrentDepthLM(config)
    model.init_weights(torch.Generator().manual_seed(0))
    model.save_pretrained(str(directory))
    tokenizer.save(directory)
    return directory


def workload(count: int, max_tokens: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": "".join(rng.choice(POINTER_CHARS) for _ in range(rng.randint(8, 40))) + "=",
             "max_tokens": max_tokens, "num_steps": DEPTHS[i % len(DEPTHS)],
             "exit": "kl:5e-4" if i % 2 else None} for i in range(count)]


def offline(model: RecurrentDepthLM, model_dir: str, requests: list[dict]) -> tuple[list[str], float]:
    """Each request through `generate`, one after another: the answers and the tokens/s."""
    tokenizer = load_tokenizer(model_dir)
    texts, tokens, started = [], 0, time.perf_counter()
    for r in requests:
        result = generate(model, r["prompt"], tokenizer, num_steps=r["num_steps"], exit=r["exit"],
                          max_new_tokens=r["max_tokens"], seed=0)
        texts.append(result.text)
        tokens += result.new_tokens
    return texts, tokens / (time.perf_counter() - started)


class Server:
    """`latentloop serve` in a subprocess on 127.0.0.1, a free port (read from its first line)."""

    def __init__(self, model_dir: str, max_batch: int, threads: int, log: Path) -> None:
        command = [sys.executable, "-m", "latentloop", "serve", model_dir, "--host", "127.0.0.1", "--port", "0",
                   "--max-batch", str(max_batch), "--max-num-steps", str(max(DEPTHS)), "--max-queue", "512",
                   "--threads", str(threads), "--grace-seconds", "2"]
        self.log = log
        self.process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not (found := re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        self.url = found.group(1)
        while httpx.get(f"{self.url}/health", timeout=60).status_code != 200:
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def one(client: httpx.AsyncClient, url: str, request: dict) -> dict:
    """One streamed completion: its text, chunk times, tokens, whether it ended properly."""
    body = dict(request, stream=True, stream_options={"include_usage": True})
    started, times, text, tokens, finish, done = time.perf_counter(), [], "", 0, None, False
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            for choice in chunk["choices"]:
                if choice["iterations"]:
                    times.append(time.perf_counter())
                text += choice["text"]
                finish = choice["finish_reason"] or finish
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    lost = not done or finish is None
    return {"text": text, "tokens": tokens, "lost": lost, "first": times[0] - started if times else None,
            "gaps": [b - a for a, b in zip(times, times[1:], strict=False)]}


async def level(url: str, requests: list[dict], streams: int, seconds: float) -> tuple[list[dict | None], float]:
    """`streams` clients, each sending its next request when the last one ended, until all are sent or
    `seconds` have passed (requests not begun by then are skipped: None)."""
    results: list[dict | None] = [None] * len(requests)
    pending = iter(range(len(requests)))
    deadline = time.perf_counter() + seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        for i in pending:
            if time.perf_counter() > deadline:
                return
            try:
                results[i] = await one(client, url, requests[i])
            except (httpx.HTTPError, json.JSONDecodeError) as err:
                results[i] = {"error": f"{type(err).__name__}: {err}"}

    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(seconds + 60), limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(streams)))
        return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def summary(results: list[dict | None], expected: list[str], wall: float, offline_rate: float) -> dict:
    done = [(r, e) for r, e in zip(results, expected, strict=True) if r is not None]
    ok = [(r, e) for r, e in done if "error" not in r]
    tokens = sum(r["tokens"] for r, _ in ok)
    firsts = [r["first"] for r, _ in ok if r["first"] is not None]
    gaps = [g for r, _ in ok for g in r["gaps"]]
    rate = tokens / wall if wall > 0 else 0.0
    return {"requests": len(done), "skipped": len(results) - len(done), "errors": len(done) - len(ok),
            "lost": sum(r["lost"] for r, _ in ok), "differ_from_offline": sum(r["text"] != e for r, e in ok),
            "tokens": tokens, "seconds": round(wall, 2), "tokens_per_second": round(rate, 1),
            "ttft_ms_p50": percentile(firsts, 0.5), "ttft_ms_p99": percentile(firsts, 0.99),
            "itl_ms_p50": percentile(gaps, 0.5), "itl_ms_p99": percentile(gaps, 0.99),
            "ratio_to_offline": round(rate / offline_rate, 2) if offline_rate else None,
            "first_errors": [r["error"] for r, _ in done if "error" in r][:3]}


def bench_model(name: str, model_dir: str, args, levels: list[tuple[int, int]], log_dir: Path) -> dict:
    requests = workload(max(count for _, count in levels), args.max_tokens)
    model = load_model(model_dir)
    expected, offline_rate = offline(model, model_dir, requests)
    report = {"offline_sequential_tokens_per_second": round(offline_rate, 1),
              "offline_load_average_1min": round(os.getloadavg()[0], 2),
              "projections_batching_bound": projection_batching_bound(model, 16)}
    server = Server(model_dir, args.max_batch, args.threads, log_dir / f"{name}.log")
    try:
        for streams, count in levels:
            results, wall = asyncio.run(level(server.url, requests[:count], streams, args.seconds))
            report[f"streams_{streams}"] = summary(results, expected[:count], wall, offline_rate)
            report[f"streams_{streams}"]["load_average_1min"] = round(os.getloadavg()[0], 2)  # others' work too
            print(json.dumps({name: {streams: report[f"streams_{streams}"]}}), file=sys.stderr, flush=True)
    finally:
        server.stop()
    single, sixteen = report.get("streams_1"), report.get("streams_16")
    if single and sixteen and single["tokens_per_second"]:
        report["speedup_16_streams_vs_1"] = round(sixteen["tokens_per_second"] / single["tokens_per_second"], 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1, 16, 64 on 64 requests of up to 8 tokens")
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server")
    parser.add_argument("--seconds", type=float, default=300, help="time limit of each level")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 16, --quick 8)")
    parser.add_argument("--levels", type=parse_levels, default=None,
                        help="STREAMS:REQUESTS,... instead of the default levels, e.g. 1:16,16:64")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to serve")
    args = parser.parse_args()
    args.max_tokens = args.max_tokens or (8 if args.quick else 16)
    levels = args.levels or ([(1, 8), (16, 32), (64, 64)] if args.quick
                             else [(1, 32), (8, 64), (16, 128), (32, 256), (64, 256)])
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = {"levels": [{"streams": s, "requests": n} for s, n in levels], "max_tokens": args.max_tokens,
              "max_batch": args.max_batch, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models:
            model_dir = "default" if name == "bundled" else str(random_model(tmp / "random-256"))
            report[name] = bench_model(name, model_dir, args, levels, tmp)
    report["targets"] = targets(report, levels)
    print(json.dumps(report, indent=2))


def targets(report: dict, levels: list[tuple[int, int]]) -> dict:
    """The issue's targets: the widest level clean (no error, none lost, every answer as offline) and
    16 streams at >= 3.5x the tokens/s of one, per model."""
    widest = f"streams_{max(s for s, _ in levels)}"
    met = {}
    for name in (m for m in MODELS if m in report):
        top = report[name][widest]
        met[f"{name}_{widest}_clean"] = not any(top[k] for k in ("errors", "lost", "differ_from_offline", "skipped"))
        speedup = report[name].get("speedup_16_streams_vs_1")
        met[f"{name}_16_streams_at_least_3.5x_one"] = speedup is not None and speedup >= 3.5
    return met


if __name__ == "__main__":
    main()
