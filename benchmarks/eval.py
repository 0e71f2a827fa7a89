"""What sharing one recurrence across depths buys: a perplexity sweep over depths in one pass
(`forward_depths`) against one forward per depth, and a 32-iteration inspect trajectory against 32
separate forwards. Prints one JSON object.

    python benchmarks/eval.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from latentloop import RecurrentDepthLM, get_preset
from latentloop.analysis.trajectories import collect_trajectories
from latentloop.eval import perplexity_at_depths, windows


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--windows", type=int, default=4)
    args = parser.parse_args()

    model = RecurrentDepthLM(get_preset(args.preset))
    model.init_weights(torch.Generator().manual_seed(0))
    model.eval()
    tokens = torch.randint(0, model.config.vocab_size, (args.windows * args.seq_len + 1,),
                           generator=torch.Generator().manual_seed(1))
    chunks = windows(tokens, args.seq_len)
    depths = [1, 4, 8, 16, 32]
    sweep = seconds(lambda: perplexity_at_depths(model, chunks, depths, batch_size=args.windows, progress=False))
    per_depth = seconds(lambda: [perplexity_at_depths(model, chunks, [d], batch_size=args.windows, progress=False)
                                 for d in depths])

    ids = tokens[:64]
    steps = 32
    one_pass = seconds(lambda: collect_trajectories(model, ids, steps, init_scale=0.0))
    with torch.no_grad():
        separate = seconds(lambda: [model(ids.view(1, -1), num_steps=n, init_scale=0.0) for n in range(1, steps + 1)])
    print(json.dumps({
        "preset": args.preset, "threads": torch.get_num_threads(),
        "perplexity_sweep": {"depths": depths, "tokens": args.windows * args.seq_len, "one_pass_s": round(sweep, 2),
                             "per_depth_s": round(per_depth, 2), "speedup": round(per_depth / sweep, 2)},
        "inspect_trajectory": {"tokens": len(ids), "iterations": steps, "one_pass_s": round(one_pass, 2),
                               "separate_forwards_s": round(separate, 2), "speedup": round(separate / one_pass, 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
