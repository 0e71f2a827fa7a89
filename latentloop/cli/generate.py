"""`latentloop generate MODEL PROMPT`: stream a continuation with every test-time compute option."""

from __future__ import annotations

import argparse
import math
import sys

DESCRIPTION = """Continue a text prompt, streaming the answer; the last line (on stderr) gives the
iterations used per token and the speed. Greedy unless --temperature > 0. Greedy runs start the
latent from a seeded random state (--seed, default 0), so the same command gives the same text;
a different --seed may give another (the initial latent is random, as in training).
MODEL is a checkpoint directory with tokenizer.json, 'default' (the bundled model) or a hub id.

examples:
  latentloop generate default "73BACbb6baa9Bbb7b=" --steps 32
  latentloop generate runs/stories-small/model "Once upon a time" --exit kl:5e-4 --min-steps 4 --max-steps 64
  latentloop generate default "73BACbb6baa9Bbb7b=" --exit kl:5e-4 --prompt-exit   # exits on the prompt too
  latentloop generate runs/stories-small/model "Once upon a time" --sampler parallel --inner-steps 4
  latentloop generate runs/stories-small/model "Once upon a time" --kv-budget 1 --warm-start
  latentloop generate runs/stories-small/model "Once upon a time" --draft-steps 4 --lookahead 4 --steps 32
  latentloop generate runs/stories-small/model "Once upon a time" --steps 32 --compile --max-new-tokens 512
  latentloop generate path/to/model "Hello" --temperature 0.8 --top-p 0.9 --seed 0 --stop "\\n\\n"
  latentloop generate path/to/weights-only --ids 0,10,6,24 --max-new-tokens 8   # ids in, ids out
"""


def add_generation_options(p: argparse.ArgumentParser) -> None:
    """The options `generate` and `chat` share (they map one to one onto `latentloop.generate`)."""
    p.add_argument("model", nargs="?", default="default", help="checkpoint directory, 'default' or hub id")
    g = p.add_argument_group("depth")
    g.add_argument("--steps", type=int, default=None,
                   help="core iterations per token (the maximum with --exit); default: the model's mean_recurrence")
    g.add_argument("--exit", default=None, metavar="SPEC",
                   help="early exit per token: kl[:5e-4], entropy[:1e-3], latent-diff[:0.03], argmax-stability[:5]")
    g.add_argument("--min-steps", type=int, default=1, help="with --exit: never stop before this many iterations")
    g.add_argument("--max-steps", type=int, default=None, help="with --exit: never run more (default --steps)")
    g.add_argument("--prompt-exit", action="store_true",
                   help="with --exit: the criterion decides the prompt's tokens' depth too (one token at a time)")
    g.add_argument("--kv-budget", type=int, default=None, help="keep K/V of only this many iterations per core layer")
    g.add_argument("--warm-start", action="store_true", help="start each token from the previous token's latent")
    g.add_argument("--init-scale", type=float, default=1.0, help="scale of the random initial latent (0 = zeros)")
    g.add_argument("--draft-steps", type=int, default=None,
                   help="self-speculative decoding: draft with this many iterations, verify with --steps")
    g.add_argument("--lookahead", type=int, default=4, help="tokens drafted per speculative round")
    w = p.add_argument_group("parallel sampler (--sampler parallel: a wavefront of positions refined at once)")
    w.add_argument("--sampler", choices=["plain", "parallel"], default="plain")
    w.add_argument("--inner-steps", type=int, default=None, help="core iterations per outer step (default 4)")
    w.add_argument("--freeze", choices=["prefix", "rightmost", "fixed"], default=None,
                   help="which converged positions commit (default prefix)")
    w.add_argument("--epsilon", type=float, default=None, help="relative latent change that counts as converged "
                                                                "(default 0.03)")
    w.add_argument("--noise", type=float, default=None, help="beta: noise mixed into the states (default 0)")
    w.add_argument("--embed-ema", type=float, default=None, help="eta: weight of a position's previous embedding "
                                                                  "(default 0.1)")
    w.add_argument("--headway", type=int, default=None, help="positions appended per outer step (default 1)")
    w.add_argument("--max-wavefront", type=int, default=None, help="most positions refined at once (default 128)")
    s = p.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--min-p", type=float, default=None)
    s.add_argument("--repetition-penalty", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=None,
                   help="seed for sampling and the random initial latent; default: 0 when greedy (repeatable "
                        "output), fresh randomness when sampling")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop string (repeatable; \\n and \\t are read as newline and tab)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: as stored")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the per-token pieces: a one-off ~50-80 s per model, then 3.4-3.9x faster")


def generation_options(args: argparse.Namespace, default_steps: int) -> dict:
    """Command-line flags -> keyword arguments of `latentloop.generate` (--steps defaults to the model's)."""
    from ..exits import parse_exit
    from ..generate import PARALLEL_SETTINGS

    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    sampling_only = {"--top-k": args.top_k, "--top-p": args.top_p, "--min-p": args.min_p}
    given = [flag for flag, value in sampling_only.items() if value is not None]
    if given and args.temperature == 0:
        raise ValueError(f"{', '.join(given)} only apply when sampling: add --temperature (e.g. 0.8)")
    if args.exit is None and (args.min_steps != 1 or args.max_steps is not None):
        raise ValueError("--min-steps/--max-steps bound an early exit: add --exit (e.g. --exit kl:5e-4)")
    if args.prompt_exit and args.exit is None:
        raise ValueError("--prompt-exit applies the exit criterion to the prompt's tokens: add --exit (e.g. kl:5e-4)")
    check_generation_args(args, default_steps)
    greedy = args.temperature == 0
    return dict(
        num_steps=default_steps if args.steps is None else args.steps, init_scale=args.init_scale,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.temperature > 0, temperature=args.temperature or 1.0, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        seed=args.seed if args.seed is not None or not greedy else 0,
        exit=parse_exit(args.exit, args.min_steps, args.max_steps), kv_budget=args.kv_budget,
        warm_start=args.warm_start, stop=[unescape(s) for s in args.stop or []], draft_steps=args.draft_steps,
        lookahead=args.lookahead, compile=args.compile, prompt_exit=args.prompt_exit, sampler=args.sampler,
        **{name: value for name in PARALLEL_SETTINGS if (value := getattr(args, name)) is not None},
    )


def check_generation_args(args: argparse.Namespace, default_steps: int) -> None:
    """Flags that `latentloop.generate` would accept and then misuse (checked here, before any work)."""
    steps = default_steps if args.steps is None else args.steps
    if not (math.isfinite(args.init_scale) and args.init_scale >= 0):
        raise ValueError(f"--init-scale must be a finite number >= 0 (0 = start from zeros), got {args.init_scale}")
    if not math.isfinite(args.temperature):
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if not (math.isfinite(args.repetition_penalty) and args.repetition_penalty > 0):
        raise ValueError(f"--repetition-penalty must be a positive number (1 = off), got {args.repetition_penalty}")
    if args.exit is not None:
        cap = args.max_steps if args.max_steps is not None else steps
        if args.min_steps < 1 or args.min_steps > cap:
            which = "--max-steps" if args.max_steps is not None else "--steps"
            raise ValueError(f"--min-steps {args.min_steps} must lie in [1, {which} {cap}]: the exit can never "
                             "stop earlier than it, nor run longer than the cap")
    if any(not s for s in args.stop or []):
        raise ValueError('--stop "" would stop before the first token; give a non-empty stop string')


def unescape(text: str) -> str:
    """Let a shell user write `--stop "\\n\\n"` for two newlines."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def load(args: argparse.Namespace):
    """The model and its tokenizer (a clear error when the directory has no tokenizer.json)."""
    from ..checkpoint import load_model, resolve_model_dir
    from ..tokenizer import load_tokenizer

    directory = resolve_model_dir(args.model)  # a file, a missing directory: named before anything loads
    tokenizer = load_tokenizer(directory)
    model = load_model(directory, dtype=args.dtype)
    return model, tokenizer


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("generate", help="continue a prompt (streams; adaptive depth, speculation, sampling)",
                       description=DESCRIPTION, formatter_class=Formatter)
    add_generation_options(p)
    p.add_argument("prompt", nargs="?", default=None, help="the text to continue (or --ids)")
    p.add_argument("--ids", default=None, metavar="1,2,3",
                   help="continue these token ids instead of a text and print the new ids (comma-separated): "
                        "works for a model directory without tokenizer.json")
    p.set_defaults(func=run)


def parse_ids(text: str) -> list[int]:
    """`--ids 1,2,3` -> [1, 2, 3] (spaces allowed; every id an integer >= 0)."""
    pieces = [piece.strip() for piece in text.split(",")]
    if not all(piece.isdigit() for piece in pieces):
        raise ValueError(f"--ids takes comma-separated token ids (integers >= 0) such as 0,13,22; got {text!r}")
    return [int(piece) for piece in pieces]


def run_ids(args: argparse.Namespace) -> int:
    """`--ids`: token ids in, new token ids out (the tokenizer, when there is one, supplies stop ids)."""
    from ..checkpoint import load_model, resolve_model_dir
    from ..generate import generate
    from ..tokenizer import TOKENIZER_FILE, load_tokenizer

    ids = parse_ids(args.ids)
    has_tokenizer = (resolve_model_dir(args.model) / TOKENIZER_FILE).is_file()
    tokenizer = load_tokenizer(args.model) if has_tokenizer else None
    if args.stop and tokenizer is None:
        raise ValueError(f"--stop matches text, and {args.model} has no {TOKENIZER_FILE} to read it with; "
                         "without one, generation ends at --max-new-tokens")
    model = load_model(args.model, dtype=args.dtype)
    result = generate(model, ids, tokenizer, **generation_options(args, model.config.mean_recurrence))
    print(",".join(str(i) for i in result.tokens[0]))
    print(f"[{result.summary()}]", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from ..generate import stream

    if args.prompt is None and args.ids is None:
        raise ValueError('nothing to continue: give a text prompt ("73BACbb6baa9Bbb7b=") or token ids (--ids 0,10,6)')
    if args.prompt is not None and args.ids is not None:
        raise ValueError("give a text prompt or --ids, not both")
    if args.ids is not None:
        return run_ids(args)
    model, tokenizer = load(args)
    text = stream(model, args.prompt, tokenizer, **generation_options(args, model.config.mean_recurrence))
    for piece in text:
        print(piece, end="", flush=True)
    print()
    print(f"[{text.result.summary()}]", file=sys.stderr)
    return 0
