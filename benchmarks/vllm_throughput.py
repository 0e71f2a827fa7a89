"""vLLM with latentloop's plugin against latentloop's own engine, same model and workload, one run; prints JSON.

The paper's throughput protocol scaled to this machine: random prompts, N requests of I tokens in and
O tokens out, greedy, a fixed depth, the same number of requests in flight in both engines (vLLM's
`max_num_seqs`, latentloop's cache rows). The model is random (2-4-2 layers, `decode.model_config`),
saved once and loaded by both. Start-up (vLLM's engine, latentloop's first steps) is timed apart from
the run. Every request's tokens are compared between the two.

Run it in the vLLM environment (`./setup.sh --vllm`):

    .venv-vllm/bin/python benchmarks/vllm_throughput.py                     # 128 x 64/64, hidden 256, depth 8
    .venv-vllm/bin/python benchmarks/vllm_throughput.py --requests 16 --output 16     # a quick look
    .venv-vllm/bin/python benchmarks/vllm_throughput.py --device cuda --dtype bfloat16 --hidden 1024 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch
from batching import run_engine
from decode import model_config

from latentloop import RecurrentDepthLM, load_model


def workload(vocab: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(count)]


def run_vllm(model_dir: Path, prompts: list[list[int]], args) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    started = time.perf_counter()
    cpu = args.device == "cpu"
    llm = LLM(model=str(model_dir), dtype=args.dtype, hf_overrides={"num_steps": args.num_steps},
              max_num_seqs=args.in_flight, enable_prefix_caching=False, skip_tokenizer_init=True,
              enforce_eager=cpu, kv_cache_memory_bytes=(1 << 30) if cpu else None)
    start_up = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=args.output, ignore_eos=True)
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts[:2]], params, use_tqdm=False)  # warm
    started = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = [list(out.outputs[0].token_ids) for out in outputs]
    return {"tokens_per_s": sum(map(len, tokens)) / seconds, "seconds": seconds, "start_up_seconds": start_up,
            "outputs": tokens}


def run_latentloop(model_dir: Path, prompts: list[list[int]], args) -> dict:
    model = load_model(model_dir, dtype=getattr(torch, args.dtype), device=args.device)
    specs = [dict(prompt=p, max_new_tokens=args.output, num_steps=args.num_steps, init_scale=0.0) for p in prompts]
    started = time.perf_counter()
    run_engine(model, specs[:2], args.in_flight, args.compile)  # warm (and, with --compile, compile)
    start_up = time.perf_counter() - started
    result = run_engine(model, specs, args.in_flight, args.compile)
    return {"tokens_per_s": result["tokens_per_s"], "seconds": result["seconds"], "start_up_seconds": start_up,
            "outputs": result["outputs"]}


def bench(hidden: int, args) -> dict:
    config = model_config(hidden).replace(context_length=args.input + args.output, mean_recurrence=args.num_steps)
    model = RecurrentDepthLM(config)
    model.init_weights(torch.Generator().manual_seed(0))
    prompts = workload(config.vocab_size, args.requests, args.input)
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        del model
        ours = run_latentloop(Path(directory), prompts, args)
        theirs = run_vllm(Path(directory), prompts, args)
    equal = sum(a == b for a, b in zip(ours.pop("outputs"), theirs.pop("outputs"), strict=True))
    return {"hidden": hidden, "layers": f"{config.n_prelude}-{config.n_core}-{config.n_coda}",
            "vllm": {k: round(v, 2) for k, v in theirs.items()},
            "latentloop": {k: round(v, 2) for k, v in ours.items()},
            "vllm_over_latentloop": round(theirs["tokens_per_s"] / ours["tokens_per_s"], 2),
            "requests_with_equal_tokens": equal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256])
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--output", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=32, help="requests decoding at once, in both engines")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="latentloop's engine with torch.compile")
    args = parser.parse_args()
    if args.device == "cpu":  # vLLM's CPU worker keeps a core for itself unless told: give it all, as latentloop has
        cores = sorted(os.sched_getaffinity(0))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}-{cores[-1]}")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # stdout is the JSON report
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {args.device}",
              "vllm_cpu_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
              "workload": {k: getattr(args, k) for k in ("requests", "input", "output", "num_steps", "in_flight",
                                                         "dtype", "compile")},
              "models": [bench(hidden, args) for hidden in args.hidden]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
