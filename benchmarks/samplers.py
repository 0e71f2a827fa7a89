"""Samplers side by side on a multi-token reasoning task (the parallel sampler paper's Table 1, at
laptop scale); prints one JSON object and writes a PNG of one answer's wavefront.

For held-out problems of the model's task (task.json beside it): exact-match accuracy, tokens/s and
mean core iterations per committed token of plain decoding at 32 iterations (full cache, and the
one-slot ring the parallel sampler runs on, so the sampler's effect is told apart from the cache's),
KL exit, self-speculative decoding (draft 4, lookahead 4), and the parallel sampler at r'=4 beta=0
and r'=2 beta=0.5; one request at a time (batch 1) and 8 rows of continuous batching (batch 8).
Every figure comes from this one run, greedy, eager.

    latentloop train recipes/addition.toml --out runs/addition   # the model (~75 min on 2 cores)
    python benchmarks/samplers.py --model runs/addition/model
    python benchmarks/samplers.py --model runs/addition/model --problems 20 --out plots/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from latentloop import load_model
from latentloop.cache import KVCache
from latentloop.engine import Engine, Scheduler
from latentloop.parallel import Parallel
from latentloop.request import Request
from latentloop.tasks import task_from_dir

STEPS = 32
VARIANTS = {  # name: (request options, kv_budget of the cache)
    "plain_32": ({}, None),
    "plain_32_kv_budget_1": ({}, 1),
    "kl_exit_5e-4": ({"exit": "kl:5e-4"}, None),
    "self_speculative_4": ({"draft_steps": 4, "lookahead": 4}, None),
    "parallel_r4_beta0": ({"parallel": Parallel(inner_steps=4)}, 1),
    "parallel_r2_beta0.5": ({"parallel": Parallel(inner_steps=2, noise=0.5)}, 1),
}


def run(model, task, problems, rows: int, options: dict, kv_budget: int | None) -> dict:
    """All problems through one scheduler with `rows` rows; accuracy, speed, iterations."""
    tok = task.tokenizer
    max_new = max(len(p.answer) for p in problems) + 1
    requests = [Request(task.prompt_ids(p), max_new_tokens=max_new, num_steps=STEPS, init_scale=0.0, seed=0,
                        stop_ids=[tok.eos_id], **options) for p in problems]
    length = max(r.positions_needed for r in requests)
    scheduler = Scheduler(Engine(model, KVCache(model.config, rows, length, STEPS, kv_budget, model.dtype)))
    started = time.perf_counter()
    for r in requests:
        scheduler.submit(r)
    scheduler.run()
    seconds = time.perf_counter() - started
    answers = [tok.decode([t for t in r.tokens if t != tok.eos_id]) for r in requests]
    iterations = [n for r in requests for n in r.iterations]
    tokens = sum(len(r.tokens) for r in requests)
    return {"accuracy": sum(a == p.answer for a, p in zip(answers, problems, strict=True)) / len(problems),
            "tokens_per_s": round(tokens / seconds, 2), "seconds": round(seconds, 2),
            "mean_iterations_per_token": round(sum(iterations) / len(iterations), 2),
            "decode_steps": scheduler.stats.decode_steps, "_requests": requests}


def plot_wavefront(request: Request, path: Path) -> None:
    """Positions x outer steps: committed before, refined, committed at that step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    history = request.wavefront.history
    width = max(before + n for before, n, _ in history) + 1
    grid = np.zeros((len(history), width))
    for step, (before, n, committed) in enumerate(history):
        grid[step, :before] = 1  # committed earlier
        grid[step, before : before + n] = 2  # refining
        grid[step, before : before + committed] = 3  # committed now
    fig, ax = plt.subplots(figsize=(6.4, 0.25 * len(history) + 1.5))
    colours = matplotlib.colors.ListedColormap(["white", "#c6dbef", "#fdae6b", "#31a354"])
    ax.imshow(grid, cmap=colours, vmin=0, vmax=3, aspect="auto", interpolation="nearest")
    ax.set_xlabel("answer position (0: the prompt's last token)")
    ax.set_ylabel("outer step")
    ax.set_title(f"parallel sampler, r'={request.parallel.inner_steps}: committed (blue), refining (orange), "
                 "committed this step (green)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory with task.json (see recipes/addition.toml)")
    parser.add_argument("--problems", type=int, default=100, help="held-out (validation) problems")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="rows of continuous batching")
    parser.add_argument("--out", default="latentloop-samplers", help="directory for the wavefront PNG")
    args = parser.parse_args()
    if args.problems < 1 or min(args.batches) < 1:
        parser.error("--problems and --batches must be >= 1")
    model, task = load_model(args.model, dtype=torch.float32).eval(), task_from_dir(args.model)
    problems = task.problems("validation", args.problems, seed=0)
    report: dict = {"machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads()},
                    "model": args.model, "task": task.name, "problems": args.problems, "num_steps": STEPS,
                    "results": {}}
    for budget in (None, 1):  # first calls pay for allocations and lazy set-up: not part of any figure
        run(model, task, problems[:2], 2, {}, budget)
    for rows in args.batches:
        results = {}
        for name, (options, budget) in VARIANTS.items():
            results[name] = run(model, task, problems, rows, options, budget)
            print(json.dumps({f"batch_{rows}": {name: {k: v for k, v in results[name].items() if k[0] != "_"}}}),
                  file=sys.stderr, flush=True)
        base = results["plain_32"]["tokens_per_s"]
        for entry in results.values():
            entry["speedup_vs_plain_32"] = round(entry["tokens_per_s"] / base, 2)
        if rows == args.batches[0]:
            picture = Path(args.out) / "wavefront.png"
            plot_wavefront(results["parallel_r4_beta0"]["_requests"][0], picture)
            report["wavefront_png"] = str(picture)
        report["results"][f"batch_{rows}"] = {n: {k: v for k, v in e.items() if k[0] != "_"}
                                              for n, e in results.items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
