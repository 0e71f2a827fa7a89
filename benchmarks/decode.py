"""Decoding speed against the machine's bounds; prints one JSON object.

Random models of hidden 256 and 1024 (4 heads per 256, SwiGLU width 2.75 h, vocab 4096, 2-4-2 layers),
prompt 32, 64 new tokens, greedy. Measures the machine's matrix-vector bandwidth and matmul throughput
in the same run, and reports each batch-1 figure as a fraction of its bandwidth bound
(bytes of weights streamed per token / bandwidth). tokens_per_s counts the prompt's forward
(compute-bound: 32 tokens at once); the fraction of the bound is that of the decode rate after it,
each timed run against the bandwidth measured just before and after it (on a shared machine the
bandwidth moves by half within minutes). Speed-ups are ratios of cases measured in this run (compiled
vs eager, each variant vs the full cache); eager batch-1 rows also count the ATen ops dispatched per token. The
reference implementation cannot run here (its code lives on the model hub), so no figure is divided by its
numbers from another run.

    python benchmarks/decode.py            # everything (~15 minutes on 2 cores)
    python benchmarks/decode.py --quick    # a short subset
    python benchmarks/decode.py --repeat 5  # best of 5 timed runs per case (default 3)
    python benchmarks/decode.py --threads 1  # one thread: steadier when other jobs share the cores
    python benchmarks/decode.py --quick --trained runs/stories-small/model  # + speculation on trained weights
    python benchmarks/decode.py --quick --trained default --prompt "73BACbb6baa9Bbb7b="  # ... on the bundled model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from latentloop import ModelConfig, RecurrentDepthLM
from latentloop.cache import KVCache
from latentloop.generate import generate

PROMPT, NEW = 32, 64


def model_config(hidden: int) -> ModelConfig:
    return ModelConfig(hidden_size=hidden, num_heads=hidden // 64, intermediate_size=int(2.75 * hidden),
                       vocab_size=4096, context_length=1024, n_prelude=2, n_core=4, n_coda=2)


def timed(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def machine_bounds(dtype: torch.dtype, matmul: bool = True) -> dict:
    """Matrix-vector bandwidth of torch.mv and plain read bandwidth (a sum) in GB/s, over a 128 MB fp32
    matrix (out of cache), and matmul GFLOP/s. Bounds use the larger bandwidth: compiled decoding's own
    matrix-vector kernels stream faster than torch.mv, and no kernel reads faster than a sum."""
    matrix = torch.randn(8192, 4096).to(dtype)
    vector = torch.randn(4096).to(dtype)
    size = matrix.numel() * matrix.element_size()
    bounds = {"matvec_GBps": size / timed(lambda: torch.mv(matrix, vector), 20) / 1e9,
              "read_GBps": size / timed(matrix.sum, 20) / 1e9}
    if matmul:
        a, b = torch.randn(1024, 1024).to(dtype), torch.randn(1024, 1024).to(dtype)
        bounds["matmul_GFLOPs"] = 2 * 1024**3 / timed(lambda: a @ b, 10) / 1e9
    return bounds


def projection_batching_bound(model: RecurrentDepthLM, rows: int, repeat: int = 400) -> dict:
    """What sharing one core iteration's projections (adapter and core blocks) among `rows` rows can gain,
    measured now: `rows` times the time of one row's products over the time of the rows' together. Weights
    that fit in a core's cache make one row's matrix-vector products nearly as fast per FLOP as a batch's,
    so where the projections are most of a token's time, batching rows gains about this much there."""
    core = [model.transformer.adapter, *model.transformer.core_block]
    layers = [m for part in core for m in part.modules() if isinstance(m, torch.nn.Linear)]

    def project(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [layer(x) for layer, x in zip(layers, inputs, strict=True)]

    seconds = {}
    with torch.inference_mode():
        for batch in (1, rows):
            inputs = [torch.randn(batch, layer.in_features, dtype=layer.weight.dtype) for layer in layers]
            seconds[batch] = timed(lambda inputs=inputs: project(inputs), repeat)
    return {"rows": rows, "us_one_row": round(seconds[1] * 1e6, 1), "us_all_rows": round(seconds[rows] * 1e6, 1),
            "bound": round(rows * seconds[1] / seconds[rows], 2)}


def read_bandwidth_by_size(sizes_mb: tuple[float, ...] = (4, 8, 12, 16, 24, 32, 128)) -> dict[str, float]:
    """Read bandwidth (a sum) over arrays of each size, GB/s: where it falls is the cache the cores
    really get. A core iteration whose weights exceed it streams them from memory every iteration."""
    result = {}
    for mb in sizes_mb:
        array = torch.randn(int(mb * 2**20) // 4)
        result[f"{mb:g}MB"] = round(array.numel() * 4 / timed(array.sum, max(5, int(400 / mb))) / 1e9, 1)
    return result


def bytes_per_token(config: ModelConfig, num_steps: int, element_size: int) -> int:
    """Weights read for one token at batch 1: prelude and coda once, core and adapter per iteration, head."""
    h, inter = config.hidden_size, config.intermediate_size
    block = 3 * h * h + h * h + 2 * h * inter + inter * h + 4 * h
    adapter = 2 * h * h
    params = (config.n_prelude + config.n_coda) * block + num_steps * (config.n_core * block + adapter)
    params += config.vocab_size * h + h  # head (+ final norm)
    return params * element_size


def streaming_bandwidth(dtype: torch.dtype) -> float:
    """GB/s at which weights can stream in now: the larger of torch.mv's and a plain read's."""
    now = machine_bounds(dtype, matmul=False)
    return max(now["matvec_GBps"], now["read_GBps"])


def run_case(model, prompt, num_steps: int, new_tokens: int, repeat: int = 1, bound: bool = False,
             **options) -> dict:
    """Warm up (compiling, if asked), then time `repeat` runs: the best and the median tokens/s (other
    guests on a shared machine only ever slow a run down, so the best is the least disturbed). With
    `bound`, each run's decode rate is a fraction of the bandwidth bound measured beside it; the median
    fraction is reported."""
    started = time.perf_counter()
    generate(model, prompt, num_steps=num_steps, init_scale=0.0, max_new_tokens=2, **options)
    warmup = time.perf_counter() - started
    runs, fractions, bandwidths = [], [], []
    for _ in range(repeat):
        before = streaming_bandwidth(model.dtype) if bound else 0.0
        result = generate(model, prompt, num_steps=num_steps, init_scale=0.0, max_new_tokens=new_tokens,
                          stop_ids=[], **options)
        runs.append(result)
        if bound:
            bandwidths.append(max(before, streaming_bandwidth(model.dtype)))
            weights = bytes_per_token(model.config, result.mean_iterations, model.dtype.itemsize)
            fractions.append(result.decode_tokens_per_second * weights / (bandwidths[-1] * 1e9))
    rates = sorted(r.tokens_per_second for r in runs)
    result = runs[0]
    row = {"tokens_per_s": round(rates[-1], 2), "median_tokens_per_s": round(rates[len(rates) // 2], 2),
           "decode_tokens_per_s": round(max(r.decode_tokens_per_second for r in runs), 2),
           "mean_iterations": round(result.mean_iterations, 2), "cache_bytes": result.cache_bytes,
           "warmup_s": round(warmup, 1)}
    if bound:
        row |= {"bandwidth_GBps": round(statistics.median(bandwidths), 1),
                "fraction_of_bound": round(statistics.median(fractions), 3),
                "fraction_of_bound_per_run": [round(f, 3) for f in fractions]}
    if result.acceptance_rate is not None:
        row["acceptance_rate"] = round(result.acceptance_rate, 3)
    return row | {"_tokens": result.tokens}


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside it: what a decode bound by per-op overhead pays for, and a
    count that, unlike a rate, the machine's load does not move."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def ops_per_token(model, prompt, num_steps: int, tokens: int = 8) -> float:
    """ATen ops that eager decoding dispatches per new token (the prompt's forward left out)."""
    calls = []
    for new_tokens in (1, 1 + tokens):
        with OpCounter() as counter:
            generate(model, prompt, num_steps=num_steps, init_scale=0.0, max_new_tokens=new_tokens, stop_ids=[])
        calls.append(counter.calls)
    return (calls[1] - calls[0]) / tokens


def cases(quick: bool) -> list[tuple]:
    """(hidden, dtype, batch, num_steps, name, options)."""
    f32, bf16 = torch.float32, torch.bfloat16
    compiled = {"compile": True}
    plan = [(256, f32, 1, 4, "full", {}), (256, f32, 1, 32, "full", {}),
            (256, f32, 1, 4, "compiled", compiled), (256, f32, 1, 32, "compiled", compiled),
            (256, f32, 1, 32, "speculative_d4", {"draft_steps": 4, "lookahead": 4}),
            (1024, f32, 1, 4, "full", {}), (1024, f32, 1, 32, "full", {}),
            (1024, f32, 1, 4, "compiled", compiled), (1024, f32, 1, 32, "compiled", compiled)]
    if quick:
        return plan
    return plan + [
        (256, f32, 8, 4, "full", {}), (256, f32, 8, 32, "full", {}), (256, f32, 8, 4, "compiled", compiled),
        (256, f32, 1, 32, "compiled_kl_exit", {"exit": "kl:5e-4"} | compiled),
        (256, bf16, 1, 4, "full", {}), (256, bf16, 1, 32, "full", {}),
        (256, f32, 1, 32, "kv_budget_1", {"kv_budget": 1}),
        (256, f32, 1, 32, "kl_exit", {"exit": "kl:5e-4"}),
        (256, f32, 1, 32, "kl_exit_warm_start", {"exit": "kl:5e-4", "warm_start": True}),
        (1024, f32, 8, 4, "full", {}), (1024, bf16, 1, 4, "full", {}),
        (1024, f32, 1, 32, "kv_budget_1", {"kv_budget": 1}),
        (1024, f32, 1, 32, "kl_exit", {"exit": "kl:5e-4"}),
        (1024, f32, 1, 32, "speculative_d4", {"draft_steps": 4, "lookahead": 4}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the batch-1 float32 cases (eager, compiled, speculative), 16 new tokens")
    parser.add_argument("--new-tokens", type=int, default=None, help=f"new tokens per run (default {NEW}, --quick 16)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs per case; tokens_per_s is the best, median_tokens_per_s the median")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--trained", default=None, metavar="DIR",
                        help="also time speculative decoding (draft 4, verify 32) on this trained model, where "
                             "drafts can agree with the verifier (random weights rarely do)")
    parser.add_argument("--prompt", default="Once upon a time", help="text prompt for --trained")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    new_tokens = args.new_tokens or (16 if args.quick else NEW)
    torch.manual_seed(0)
    bounds = {"float32": machine_bounds(torch.float32), "bfloat16": machine_bounds(torch.bfloat16)}
    report: dict = {"machine": {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                                "load_average": os.getloadavg(), **{k: {n: round(v, 2) for n, v in b.items()}
                                                                    for k, b in bounds.items()},
                                "read_GBps_by_size": read_bandwidth_by_size()},
                    "core_iteration_weight_MB": {f"h{h}": round(bytes_per_token(model_config(h), 1, 4) / 2**20 -
                                                               bytes_per_token(model_config(h), 0, 4) / 2**20, 1)
                                                 for h in (256, 1024)},
                    "setup": {"prompt": PROMPT, "new_tokens": new_tokens, "greedy": True, "init_scale": 0.0,
                              "timed_runs_per_case": args.repeat}, "results": []}
    models: dict = {}
    plain_tokens: dict = {}
    for hidden, dtype, batch, steps, name, options in cases(args.quick):
        if (hidden, dtype) not in models:
            model = RecurrentDepthLM(model_config(hidden))
            model.init_weights(torch.Generator().manual_seed(0))
            models[hidden, dtype] = model.to(dtype).eval()
        model = models[hidden, dtype]
        prompt = torch.randint(0, 4096, (batch, PROMPT), generator=torch.Generator().manual_seed(1))
        row = {"hidden": hidden, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "num_steps": steps,
               "variant": name} | run_case(model, prompt, steps, new_tokens, args.repeat, bound=batch == 1, **options)
        tokens = row.pop("_tokens")
        key = (hidden, dtype, batch, steps)
        if name == "full":
            plain_tokens[key] = tokens
            if batch == 1:  # a batch's step dispatches its ops once for all its rows
                row["eager_ops_per_token"] = ops_per_token(model, prompt, steps)
        elif key in plain_tokens:
            full = next(r for r in report["results"] if r["variant"] == "full" and
                        (r["hidden"], r["dtype"], r["batch"], r["num_steps"]) == (hidden, row["dtype"], batch, steps))
            row["speedup_vs_full"] = round(row["tokens_per_s"] / full["tokens_per_s"], 2)
            if name.startswith("speculative") or name == "compiled":
                row["same_tokens_as_full"] = tokens == plain_tokens[key]
            row["cache_fraction_of_full"] = round(row["cache_bytes"] / full["cache_bytes"], 4)
        report["results"].append(row)
        print(json.dumps(row), flush=True, file=sys.stderr)
    config = model_config(256)
    full, shared = KVCache(config, 1, PROMPT + NEW, 32), KVCache(config, 1, PROMPT + NEW, 32, kv_budget=1)
    report["cache_memory_h256_r32"] = {"full_bytes": full.nbytes, "kv_budget_1_bytes": shared.nbytes,
                                       "fraction": round(shared.nbytes / full.nbytes, 4)}
    if args.trained:
        report["speculative_trained"] = speculative_on(args.trained, args.prompt, new_tokens, args.repeat)
    print(json.dumps(report, indent=2))


def speculative_on(model_dir: str, prompt: str, new_tokens: int, repeat: int) -> dict:
    """Plain greedy decoding at 32 iterations against drafting 4 tokens at 4 iterations, on a real model,
    eager and compiled."""
    from latentloop import load_model
    from latentloop.tokenizer import load_tokenizer

    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    ids = torch.tensor([tokenizer.encode_prompt(prompt)])
    report: dict = {"model": model_dir, "prompt": prompt}
    for name, options in (("eager", {}), ("compiled", {"compile": True})):
        plain = run_case(model, ids, 32, new_tokens, repeat, **options)
        speculative = run_case(model, ids, 32, new_tokens, repeat, draft_steps=4, lookahead=4, **options)
        report[name] = {"plain_tokens_per_s": plain["tokens_per_s"],
                        "speculative_tokens_per_s": speculative["tokens_per_s"],
                        "acceptance_rate": speculative["acceptance_rate"],
                        "speedup": round(speculative["tokens_per_s"] / plain["tokens_per_s"], 2),
                        "same_tokens": plain["_tokens"] == speculative["_tokens"]}
    return report


if __name__ == "__main__":
    main()
