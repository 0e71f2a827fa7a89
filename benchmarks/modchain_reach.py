"""How far along its longest chain a modchain model computes the running value, per depth; prints JSON.

A model trained with partial labels predicts, at every digit of a chain, the value so far. Reading those
predictions (one teacher-forced pass per depth, zero initial state) tells apart two reasons for a wrong
answer on the harder split: the computation along the chain stops short (more depth could help), or
the chain is computed but the answer does not read it out (depth cannot help).

    python benchmarks/modchain_reach.py --model runs/reasoning-mixed/model --count 500
"""

from __future__ import annotations

import argparse
import json

from latentloop import load_model
from latentloop.tasks import task_from_dir
from latentloop.tasks.evaluate import partial_hits


def longest_chain(prompt: str) -> tuple[int, int, int]:
    """(index, first character, last character) of the longest chain in `a+1*3,b-2=`."""
    chains = prompt[:-1].split(",")
    index = max(range(len(chains)), key=lambda c: len(chains[c]))
    start = sum(len(c) + 1 for c in chains[:index])
    return index, start, start + len(chains[index]) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a modchain model (recipes/reasoning*.toml)")
    parser.add_argument("--split", default="test", help="test = the harder-than-training split")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--depths", default="4,8,16,32,64")
    args = parser.parse_args()
    model, task = load_model(args.model).eval(), task_from_dir(args.model)
    if task.name != "modchain":
        raise SystemExit(f"{args.model} was trained on {task.name!r}, not on modchain")
    problems = task.problems(args.split, args.count, seed=3)
    depths = [int(d) for d in args.depths.split(",")]
    hits = partial_hits(model, task, problems, depths)
    report = {"model": args.model, "split": args.split, "problems": len(problems), "depths": {}}
    for depth, hit in hits.items():
        resolved, chain_done, long_digit, short_digit = [], [], [], []
        for i, p in enumerate(problems):
            index, first, last = longest_chain(p.prompt)
            digits = [j for j in range(first, last + 1) if p.partials[j]]
            wrong = [k for k, j in enumerate(digits) if not hit[i, 1 + j]]
            resolved.append((wrong[0] if wrong else len(digits)) - 1)  # operations before the first error
            chain_done.append(not wrong)
            answer = len(p.prompt)  # the '=' sits at position len(prompt) and predicts answer[0]
            long_digit.append(bool(hit[i, answer + index]))
            short_digit.append(all(bool(hit[i, answer + k]) for k in range(len(p.answer)) if k != index))
        n = len(problems)
        report["depths"][depth] = {
            "mean_longest_chain": round(sum(p.difficulty for p in problems) / n, 2),
            "mean_operations_resolved": round(sum(resolved) / n, 2),
            "longest_chain_fully_computed": round(sum(chain_done) / n, 3),
            "answer_digit_of_longest_chain": round(sum(long_digit) / n, 3),
            "answer_digits_of_other_chains": round(sum(short_digit) / n, 3),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
