"""`latentloop inspect MODEL "text" --out DIR`: what the latent does while the model thinks."""

from __future__ import annotations

import argparse

DESCRIPTION = """Run TEXT through MODEL for --steps iterations and write DIR/report.html with PNG figures
beside it: a convergence heatmap of ||z_t - z_final|| per token and iteration, PCA trajectories
(2-D, 3-D and per-token orbits in PC pairs 1-2, 3-4, 5-6), each token's class (fixed point, orbit,
slider), path independence across --samples random starts, token correlation per iteration and
the KL-exit step of every token. DIR/data.npz holds the arrays, DIR/summary.json the numbers.

examples:
  latentloop inspect default "73BACbb6baa9Bbb7b=" --out inspect-out
  latentloop inspect path/to/checkpoint "The capital of France is" --steps 64 --samples 16 --out run1
  latentloop inspect tomg-group-umd/huginn-0125 "12 + 7 =" --init-scale 0 --out zero-start
"""


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("inspect", help="latent trajectories, PCA and path independence as an HTML report",
                       description=DESCRIPTION, formatter_class=Formatter)
    p.add_argument("model", help="checkpoint directory, 'default' or hub id (with tokenizer.json)")
    p.add_argument("text", help="the text whose tokens are inspected")
    p.add_argument("--out", required=True, help="output directory for report.html, figures and data")
    p.add_argument("--steps", type=int, default=32, help="iterations to follow (>= 4)")
    p.add_argument("--samples", type=int, default=8, help="random initial states for path independence (>= 2)")
    p.add_argument("--init-scale", type=float, default=1.0, help="scale of the random initial state (0 = zeros)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initial states")
    p.add_argument("--exit-threshold", type=float, default=5e-4, help="KL exit threshold for the exit-step figure")
    p.add_argument("--max-tokens", type=int, default=128, help="refuse longer texts (figures get unreadable)")
    p.add_argument("--device", default=None, help="torch device; None = cuda if available, else cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.steps < 4:
        raise ValueError(f"--steps must be >= 4 to classify trajectories, got {args.steps}")
    if args.samples < 2:
        raise ValueError(f"--samples must be >= 2 for path independence, got {args.samples}")
    import torch

    from ..analysis import inspect_sequence
    from ..analysis.report import write_report
    from ..checkpoint import load_model
    from ..tokenizer import load_tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.model)
    ids = tokenizer.encode_prompt(args.text)
    if not ids:
        raise ValueError("the text is empty; pass at least one character to inspect")
    if len(ids) > args.max_tokens:
        raise ValueError(f"the text has {len(ids)} tokens, more than --max-tokens {args.max_tokens}; "
                         "shorten it or raise --max-tokens")
    model = load_model(args.model, dtype=torch.float32, device=device)
    if len(ids) > model.config.context_length:
        raise ValueError(f"the text has {len(ids)} tokens but the model's context is {model.config.context_length}")
    result = inspect_sequence(model, ids, num_steps=args.steps, num_samples=args.samples,
                              init_scale=args.init_scale, seed=args.seed, exit_threshold=args.exit_threshold,
                              token_texts=[tokenizer.decode([i]) for i in ids])
    path = write_report(result, args.out, title=f"latentloop inspect: {args.model}", text=args.text)
    labels = [c.label for c in result.classes]
    counts = ", ".join(f"{labels.count(label)} {label}" for label in ("fixed point", "orbit", "slider"))
    print(f"{len(ids)} tokens x {args.steps} iterations: {counts}; "
          f"mean KL-exit step {result.trajectories.exit_steps.mean():.2f}")
    print(f"wrote {path}")
    return 0
