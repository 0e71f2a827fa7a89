"""`latentloop eval MODEL`: loss/perplexity and task accuracy at a list of depths."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from . import check_device, check_out_dir

DESCRIPTION = """Evaluate MODEL at several depths (iteration counts) in one pass per batch: the prelude
runs once and the recurrence is read out at every depth.

  --data   loss/perplexity on a `latentloop data prepare` directory (its validation rows by default,
           --split), a token file (.bin uint16/uint32 by vocabulary, .npy) or a text file (.txt/.md,
           tokenized with the model's tokenizer).
  --task   accuracy on local JSONL task files: generation tasks (prompt, reference answer, regex
           extraction, exact match, few-shot, chat template on/off) and multiple-choice tasks scored
           by log-likelihood (raw and length-normalized). See docs/evaluation.md for the format.
  --exit   adds adaptive-exit runs of the generation tasks (each depth is the cap), reporting
           accuracy and mean iterations per token.

Writes OUT/results.json and PNG plots of each metric against depth. The bundled 'default' model
reads only pointer chains (its alphabet is 0-9 a-i A-I =): docs/pointers-validation.jsonl holds 50
of its held-out problems; a text file needs a text model such as the one
`latentloop train recipes/stories-small.toml` writes to runs/stories-small/model (its byte-level
BPE spells any text; a character-level tokenizer names the characters it does not know).

examples:
  latentloop eval default --task docs/pointers-validation.jsonl --depths 1 8 16 32 --exit kl:5e-4 --limit 20
  latentloop eval runs/stories-small/model --data ../shared/data/tinyshakespeare/input.txt --depths 1 4 8 32
  latentloop eval path/to/ckpt --data data/val --depths 1 4 8 16 32 64 --out eval-val
  latentloop eval path/to/ckpt --task gsm8k/test.jsonl --format gsm8k --limit 50 --depths 4 16 32
  latentloop eval path/to/ckpt --task mc.jsonl --fewshot 3 --chat --depths 8 32
"""


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("eval", help="loss and task accuracy vs depth", description=DESCRIPTION,
                       formatter_class=Formatter)
    p.add_argument("model", help="checkpoint directory, 'default' or hub id")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 4, 8, 16, 32], help="iteration counts to evaluate")
    p.add_argument("--data", help="`data prepare` directory, token file (.bin/.npy) or text file for loss")
    p.add_argument("--split", default="val", choices=["val", "train"], help="rows of a `data prepare` directory")
    p.add_argument("--task", action="append", default=[], help="JSONL task file (repeat for several)")
    p.add_argument("--format", help="built-in task config for files without a config line (gsm8k, generate, choice)")
    p.add_argument("--fewshot", type=int, help="number of few-shot demonstrations (overrides the task's)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap prompts in the chat template; None keeps the task's setting")
    p.add_argument("--max-new-tokens", type=int, help="generation length cap (overrides the task's)")
    p.add_argument("--exit", help="adaptive-exit criterion for extra generation runs, e.g. kl:5e-4")
    p.add_argument("--limit", type=int, help="evaluate only this many windows / examples (quick runs)")
    p.add_argument("--seq-len", type=int, help="window length for token/text files; None = the context length")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--init-scale", type=float, default=0.0, help="random initial state scale (0 = zeros, exact)")
    p.add_argument("--seed", type=int, default=0, help="seed for random initial states")
    p.add_argument("--device", default=None, help="torch device; None = cuda if available, else cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--out", default="eval-out", help="directory for results.json and plots")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """Reject bad input before loading anything."""
    if not args.depths or any(d < 1 for d in args.depths):
        raise ValueError(f"--depths must all be >= 1 (iteration counts), got {args.depths}")
    if not args.data and not args.task:
        raise ValueError("nothing to evaluate: pass --data (token shards or a text file) and/or --task FILE.jsonl")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.seq_len is not None and args.seq_len < 1:
        raise ValueError(f"--seq-len must be >= 1 (tokens predicted per window), got {args.seq_len}")
    if not (math.isfinite(args.init_scale) and args.init_scale >= 0):
        raise ValueError(f"--init-scale must be a finite number >= 0 (0 = zeros), got {args.init_scale}")
    if args.fewshot is not None and args.fewshot < 0:
        raise ValueError(f"--fewshot must be >= 0, got {args.fewshot}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    check_out_dir(args.out)
    args.device = check_device(args.device)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    import torch

    from ..checkpoint import load_model, resolve_model_dir
    from ..eval.perplexity import TEXT_SUFFIXES, load_windows, perplexity_at_depths
    from ..eval.report import write_results
    from ..eval.tasks import load_task, run_task
    from ..exits import parse_exit
    from ..tokenizer import load_tokenizer

    depths = sorted(set(args.depths))
    exit_criterion = parse_exit(args.exit)
    tasks = [load_task(path, format=args.format, num_fewshot=args.fewshot, chat=args.chat,
                       max_new_tokens=args.max_new_tokens) for path in args.task]
    directory = resolve_model_dir(args.model)
    needs_tokenizer = bool(tasks) or (args.data and Path(args.data).suffix in TEXT_SUFFIXES)
    tokenizer = load_tokenizer(directory) if needs_tokenizer and (directory / "tokenizer.json").is_file() else None
    if tasks and tokenizer is None:
        raise FileNotFoundError(f"{directory} has no tokenizer.json; task files are text and need one")
    model = load_model(directory, dtype=getattr(torch, args.dtype), device=args.device)

    results: dict = {"model": str(args.model), "depths": depths, "init_scale": args.init_scale, "limit": args.limit}
    if args.seq_len is not None and args.seq_len > model.config.context_length:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the model's context length {model.config.context_length}")
    if args.data:
        seq_len = model.config.context_length if args.seq_len is None else args.seq_len
        chunks = load_windows(args.data, model.config.vocab_size, seq_len,
                              tokenizer, split=args.split)
        ppl = perplexity_at_depths(model, chunks, depths, batch_size=args.batch_size, limit=args.limit,
                                   init_scale=args.init_scale, seed=args.seed, progress=not args.quiet)
        results["perplexity"] = {"source": str(args.data), "tokens": next(iter(ppl.values()))["tokens"],
                                 "depths": {str(d): v for d, v in ppl.items()}}
        for d, v in ppl.items():
            print(f"depth {d:>4}: loss {v['loss']:.4f}  perplexity {v['perplexity']:.2f}")
    if tasks:
        results["tasks"] = {}
        for task in tasks:
            outcome = run_task(model, tokenizer, task, depths, exit=exit_criterion, batch_size=args.batch_size,
                               limit=args.limit, init_scale=args.init_scale, progress=not args.quiet)
            results["tasks"][task.name] = outcome
            for d, v in outcome["depths"].items():
                extra = f"  (length-normalized {v['accuracy_norm']:.3f})" if "accuracy_norm" in v else ""
                print(f"{task.name} depth {d:>4}: accuracy {v['accuracy']:.3f}{extra}")
            for d, v in outcome.get("adaptive", {}).items():
                print(f"{task.name} exit {args.exit} cap {d:>4}: accuracy {v['accuracy']:.3f}, "
                      f"{v['mean_iterations']:.2f} iterations/token")
    for path in write_results(results, args.out):
        print(f"wrote {path}")
    return 0
