"""Does warm start save iterations per token under KL exit? Prints one JSON object.

Greedy continuations of `--prompts` prompts, in one padded batch per setting, at `--steps` iterations
with the exit criterion. The prompts are cut from a text (`--text`: each `--prompt-tokens` long, from
the end of the text, which a model trained on its start has not seen in order; `--new-tokens` each),
or are held-out problems of the task the model was trained on (`--task`: its task.json; each answer
in full, and its exact-match accuracy per setting). Settings: a random start (the training start,
`init_scale` 1), a zero start, and warm start (each token starts from the previous token's final
state). Reported per setting: the mean core iterations of the decoded tokens after the first (the
first has no previous token to start from, so it starts alike in the random and warm settings), and
the share of tokens identical to the random start's continuation.

    python benchmarks/warm_start.py runs/stories-small/model \
        --text ../shared/data/tinystories-sample/tinystories_sample.txt
    python benchmarks/warm_start.py runs/addition/model --task --prompts 64 --split test
    python benchmarks/warm_start.py default --prompt "73BACbb6baa9Bbb7b="
"""

from __future__ import annotations

import argparse
import json
import time

from latentloop import generate, load_model
from latentloop.tasks import task_from_dir
from latentloop.tasks.base import SPLITS
from latentloop.tokenizer import load_tokenizer


def decoded_iterations(result) -> list[int]:
    """Iterations of every token after each row's first (which warm start cannot start warm)."""
    return [n for row in result.iterations for n in row[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--text", help="text file to cut prompts from")
    parser.add_argument("--prompt", help="one text prompt instead of --text")
    parser.add_argument("--task", action="store_true", help="held-out problems of the model's task.json")
    parser.add_argument("--split", default="validation", choices=SPLITS, help="the task's split: validation "
                        "(trained-on difficulty, unseen problems) or test (harder)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=32, help="cap on iterations per token")
    parser.add_argument("--exit", nargs="+", default=["kl:5e-4"], help="exit criteria to compare")
    args = parser.parse_args()

    model, tok = load_model(args.model), load_tokenizer(args.model)
    problems = None
    if args.task:
        task = task_from_dir(args.model)
        problems = task.problems(args.split, args.prompts, seed=0)
        prompts = [task.prompt_ids(p) for p in problems]
        args.new_tokens = max(len(tok.encode(p.answer)) for p in problems)
        if args.new_tokens < 2:
            parser.error(f"{args.model}'s task has one-token answers: no token after the first to start warm")
    elif args.prompt is not None:
        prompts = [tok.encode_prompt(args.prompt)]
    else:
        with open(args.text, encoding="utf-8") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 200_000))
            tail = f.read()
        ids = tok.encode(tail[tail.index("\n") + 1:])
        stride = (len(ids) - args.prompt_tokens) // args.prompts
        prompts = [ids[i * stride : i * stride + args.prompt_tokens] for i in range(args.prompts)]
    settings = {"random start": dict(init_scale=1.0, seed=0), "zero start": dict(init_scale=0.0),
                "warm start": dict(init_scale=1.0, seed=0, warm_start=True)}
    report: dict = {"model": args.model, "split": args.split if args.task else None, "prompts": len(prompts),
                    "new_tokens": args.new_tokens, "steps": args.steps, "results": {}}
    for criterion in args.exit:
        rows: dict = {}
        reference = None
        for name, options in settings.items():
            started = time.perf_counter()
            result = generate(model, prompts, tok, num_steps=args.steps, exit=criterion,
                              max_new_tokens=args.new_tokens, stop_ids=[], **options)
            counts = decoded_iterations(result)
            tokens = [t for row in result.tokens for t in row]
            reference = tokens if reference is None else reference
            same = sum(a == b for a, b in zip(tokens, reference, strict=True)) / len(tokens)
            rows[name] = {"iterations_per_token": round(sum(counts) / len(counts), 3), "tokens": len(counts),
                          "same_tokens_as_random_start": round(same, 3),
                          "seconds": round(time.perf_counter() - started, 1)}
            if problems is not None:
                answers = [tok.decode(row) for row in result.tokens]
                right = sum(a == p.answer for a, p in zip(answers, problems, strict=True))
                rows[name]["accuracy"] = right / len(problems)
        rows["saved_by_warm_start"] = round(rows["random start"]["iterations_per_token"]
                                            - rows["warm start"]["iterations_per_token"], 3)
        report["results"][criterion] = rows
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
