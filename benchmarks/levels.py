"""How deep a model's computation reaches after each number of iterations; prints JSON.

A model trained with partial labels predicts, at every position that closes a sub-problem, that
sub-problem's answer (a circuit's gate values, the value each pointer holds). Grouping those
predictions by how deep the sub-problem lies (`task.levels`) shows how the computation advances with
iterations: a model that works level by level gets level l right from about l iterations on, and the
deepest level it reaches grows with the iterations it is given.

    python benchmarks/levels.py                                     # the bundled default model
    python benchmarks/levels.py --model runs/pointers/model --split validation --count 500
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from latentloop import load_model
from latentloop.tasks import task_from_dir
from latentloop.tasks.evaluate import partial_hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--split", default="test", help="test = harder problems than training's")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--depths", default="1,2,4,8,16,32,64")
    args = parser.parse_args()
    model, task = load_model(args.model).eval(), task_from_dir(args.model)
    problems = task.problems(args.split, args.count, seed=3)
    try:
        task.levels(problems[0].prompt)
    except NotImplementedError as err:
        raise SystemExit(f"{args.model}: {err} (levels.py reads circuit and pointers models)") from None
    depths = [int(d) for d in args.depths.split(",")]
    hits = partial_hits(model, task, problems, depths)
    report = {"model": args.model, "split": args.split, "problems": len(problems), "iterations": {}}
    for depth, hit in hits.items():
        right, seen = defaultdict(int), defaultdict(int)
        for i, p in enumerate(problems):
            for char, level in enumerate(task.levels(p.prompt)):
                if level is not None:
                    right[level] += int(hit[i, 1 + char])  # prompt character j sits at position 1 + j
                    seen[level] += 1
        accuracy = {level: round(right[level] / seen[level], 3) for level in sorted(seen)}
        reached = [level for level in accuracy if all(accuracy[lv] >= 0.9 for lv in accuracy if lv <= level)]
        report["iterations"][depth] = {"deepest_level_at_90pct": max(reached, default=-1),
                                       "accuracy_by_level": accuracy}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
