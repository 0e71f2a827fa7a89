"""Continuous batching against one request at a time; prints one JSON object.

Workload: random prompts of 16-64 tokens, 64 new tokens each, greedy, no stop ids (every request
runs to its limit). Models: a random one at hidden 256 (2-4-2 layers, as in decode.py) and the
bundled model (float32).

- W1, fixed depth 32: `generate` one request at a time (on the first `--sequential` requests of the
  workload: a rate per token, so a prefix measures it) vs the engine with 16 rows running all of
  them; aggregate tokens/s and their ratio, and the engine's FLOP/s as a fraction of the matmul
  throughput measured in the same run. `projections_batching_bound`: rows x the time of one row's
  core-iteration projections over the time of all rows' (eager, measured in the same run): on a CPU
  whose caches hold the weights, one row's products run nearly as fast per FLOP as a batch's, and
  this is what sharing them can gain.
- W2, mixed depth: num_steps drawn from {4, 8, 16, 32, 64} per request, and separately exit=kl:5e-4
  on the bundled model; the same engine with compaction on (rows ponder at their own iterations, each
  step ends when a row is done) vs off (a token per row and step, every row to the deepest), ratio,
  mean iterations per token, and where the time went (prompts, decode steps); with `--count-ops`, the
  ATen ops each arm dispatches per generated token, eager (a count the machine's load does not move).
- Cache bytes per token, and the rows a 4 GB budget holds for huginn-0125's shapes.

    python benchmarks/batching.py                 # eager; 64 requests (~20 minutes on 2 cores)
    python benchmarks/batching.py --compile       # compiled as well (adds compile time per model)
    python benchmarks/batching.py --quick         # 16 requests of 32 new tokens
    python benchmarks/batching.py --workloads W2 --requests 64 --new-tokens 16   # W2 only, rows refilled from a queue
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch
from decode import OpCounter, machine_bounds, model_config, projection_batching_bound

from latentloop import RecurrentDepthLM, get_preset, load_model
from latentloop.accounting import flops_per_token
from latentloop.cache import KVCache, bytes_per_token
from latentloop.engine import Engine, Scheduler
from latentloop.generate import generate
from latentloop.request import Request

DEPTHS = (4, 8, 16, 32, 64)


def workload(vocab: int, count: int, new_tokens: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [dict(prompt=[rng.randrange(vocab) for _ in range(rng.randint(16, 64))], max_new_tokens=new_tokens,
                 init_scale=0.0) for _ in range(count)]


def run_engine(model, specs: list[dict], rows: int, compile: bool, compaction: bool = True) -> dict:
    """All requests through one engine; tokens/s over the whole run (prefills included)."""
    requests = [Request(**s, stop_ids=()) for s in specs]
    length, depth = max(r.positions_needed for r in requests), max(r.depth for r in requests)
    engine = Engine(model, KVCache(model.config, rows, length, depth, dtype=model.dtype), compile=compile,
                    compaction=compaction)
    scheduler = Scheduler(engine)
    started = time.perf_counter()
    for request in requests:
        scheduler.submit(request)
    scheduler.run()
    seconds = time.perf_counter() - started
    tokens = sum(len(r.tokens) for r in requests)
    iterations = [n for r in requests for n in r.iterations]
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
            "mean_iterations": sum(iterations) / len(iterations), "core_row_iterations": engine.core_rows,
            "prefill_seconds": scheduler.stats.prefill_seconds, "decode_seconds": scheduler.stats.decode_seconds,
            "outputs": [r.tokens for r in requests]}


def run_sequential(model, specs: list[dict], compile: bool) -> dict:
    started = time.perf_counter()
    outputs = []
    for s in specs:
        options = {k: v for k, v in s.items() if k != "prompt"}
        outputs.append(generate(model, [s["prompt"]], stop_ids=[], compile=compile, **options).tokens[0])
    seconds = time.perf_counter() - started
    tokens = sum(len(t) for t in outputs)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "outputs": outputs}


def warm_up(model, specs: list[dict], rows: int, compile: bool) -> float:
    """Compile (or just touch) every graph the engine will meet: a short run of the workload's shape, its
    rows at depths 1..rows so that compaction meets every number of rows still thinking (a batch of 1,
    the first size and the graph dynamic in the batch size), half of them watched by an exit that never
    fires (the decode at each of those sizes too); narrow prompts, one and two to a forward at two lengths
    (they run graphs of their own, dynamic in the length; wide ones run eagerly: `compiled.EAGER_TOKENS`);
    then one request at a time, a prompt of 8 tokens and the longest one."""
    started = time.perf_counter()
    short = [dict(s, max_new_tokens=2, num_steps=1 + i % rows, exit="kl:1e-30" if i % 2 else None)
             for i, s in enumerate(specs[: rows + 1])]
    for compaction in (True, False):
        run_engine(model, short, rows, compile, compaction)
    longest = max(specs, key=lambda s: len(s["prompt"]))["prompt"]
    for rows_at_once in (1, 2):  # a narrow prompt forward (one or two rows), at two lengths: dynamic in them
        for length in (8, 12):
            run_engine(model, [dict(short[0], prompt=longest[:length])] * rows_at_once, rows, compile)
    run_sequential(model, [dict(short[0], prompt=prompt) for prompt in (longest[:8], longest)], compile)
    return time.perf_counter() - started


def w1(model, specs: list[dict], rows: int, sequential: int, compile: bool, matmul_flops: float) -> dict:
    fixed = [dict(s, num_steps=32) for s in specs]
    compile_seconds = warm_up(model, fixed, rows, compile)
    alone = run_sequential(model, fixed[:sequential], compile)
    batched = run_engine(model, fixed, rows, compile)
    same = batched["outputs"][:sequential] == alone["outputs"]
    flops = flops_per_token(model.config, 32) * batched["tokens_per_s"]
    return {"sequential_tokens_per_s": round(alone["tokens_per_s"], 2), "sequential_requests": sequential,
            "engine_tokens_per_s": round(batched["tokens_per_s"], 2), "engine_rows": rows,
            "ratio": round(batched["tokens_per_s"] / alone["tokens_per_s"], 2),
            "engine_fraction_of_matmul_throughput": round(flops / matmul_flops, 4),
            "projections_batching_bound": projection_batching_bound(model, rows),
            "same_tokens_as_sequential": same, "warmup_seconds": round(compile_seconds, 1)}


def ops_per_token(model, specs: list[dict], rows: int, compaction: bool) -> float:
    """ATen ops the eager engine dispatches per generated token over the whole workload, prompts included."""
    with OpCounter() as counter:
        tokens = run_engine(model, specs, rows, False, compaction)["tokens"]
    return counter.calls / tokens


def w2(model, specs: list[dict], rows: int, compile: bool, exit: str | None = None, count_ops: bool = False) -> dict:
    from latentloop.exits import parse_exit

    rng = random.Random(1)
    if exit is None:
        mixed = [dict(s, num_steps=rng.choice(DEPTHS)) for s in specs]
    else:
        mixed = [dict(s, num_steps=32, exit=parse_exit(exit)) for s in specs]
    runs = {on: run_engine(model, mixed, rows, compile, compaction=on) for on in (True, False)}
    on, off = runs[True], runs[False]
    ops = {"eager_ops_per_token": [round(ops_per_token(model, mixed, rows, c), 1) for c in (True, False)]
           } if count_ops else {}
    return ops | {
            "workload": f"exit={exit}" if exit else f"num_steps from {list(DEPTHS)}",
            "compaction_tokens_per_s": round(on["tokens_per_s"], 2),
            "no_compaction_tokens_per_s": round(off["tokens_per_s"], 2),
            "ratio": round(on["tokens_per_s"] / off["tokens_per_s"], 2),
            "core_row_iterations": [on["core_row_iterations"], off["core_row_iterations"]],
            "prefill_seconds": [round(on["prefill_seconds"], 2), round(off["prefill_seconds"], 2)],
            "decode_seconds": [round(on["decode_seconds"], 2), round(off["decode_seconds"], 2)],
            "mean_iterations_per_token": round(on["mean_iterations"], 2),
            "same_tokens": on["outputs"] == off["outputs"]}


def cache_figures() -> dict:
    huginn = get_preset("huginn-0125")
    rows = {}
    for length in (1024, 4096):
        for budget in (None, 4, 1):
            per_token = bytes_per_token(huginn, 32, budget, torch.bfloat16)
            key = f"context_{length}_kv_budget_{budget or 'full'}"
            rows[key] = {"bytes_per_token": per_token, "rows_in_4GB": 4 * 10**9 // (per_token * (length + 1))}
    return {"huginn-0125_bf16_32_iterations": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=8, help="requests timed one at a time (a prefix)")
    parser.add_argument("--compile", action="store_true", help="also measure compiled decoding")
    parser.add_argument("--quick", action="store_true", help="16 requests, 32 new tokens, 4 sequential")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workloads", default="W1,W2", help="which to run, comma-separated (default W1,W2)")
    parser.add_argument("--count-ops", action="store_true", help="W2: also count the ATen ops per token (eager)")
    args = parser.parse_args()
    workloads = set(args.workloads.upper().split(","))
    if not workloads or not workloads <= {"W1", "W2"}:
        parser.error(f"--workloads takes W1, W2 or W1,W2; got {args.workloads!r}")
    if args.quick:
        args.requests, args.new_tokens, args.sequential = 16, 32, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    bounds = machine_bounds(torch.float32)
    matmul_flops = bounds["matmul_GFLOPs"] * 1e9
    random_model = RecurrentDepthLM(model_config(256))
    random_model.init_weights(torch.Generator().manual_seed(0))
    models = {"random_h256": random_model.eval(), "bundled": load_model("default", dtype=torch.float32)}
    report: dict = {"machine": {"threads": torch.get_num_threads(), **{k: round(v, 1) for k, v in bounds.items()}},
                    "workload": {"requests": args.requests, "prompt_tokens": "16-64", "new_tokens": args.new_tokens}}
    for compile in (False, True) if args.compile else (False,):
        mode = "compiled" if compile else "eager"
        for name, model in models.items():
            specs = workload(model.config.vocab_size, args.requests, args.new_tokens)
            entry = {}
            if "W1" in workloads:
                entry["W1_fixed_depth_32"] = w1(model, specs, args.rows, args.sequential, compile, matmul_flops)
            if "W2" in workloads:
                entry["W2_mixed_depth"] = w2(model, specs, args.rows, compile, count_ops=args.count_ops)
                if name == "bundled":
                    entry["W2_kl_exit"] = w2(model, specs, args.rows, compile, "kl:5e-4", args.count_ops)
            report[f"{name}_{mode}"] = entry
            print(json.dumps({f"{name}_{mode}": entry}), file=sys.stderr, flush=True)
    report["cache"] = cache_figures()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
