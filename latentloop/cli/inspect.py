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
    import math

    from . import check_device, check_out_dir

    if args.steps < 4:
        raise ValueError(f"--steps must be >= 4 to classify trajectories, got {args.steps}")
    if args.samples < 2:
        raise ValueError(f"--samples must be >= 2 for path independence, got {args.samples}")
    if not (math.isfinite(args.init_scale) and args.init_scale >= 0):
        raise ValueError(f"--init-scale must be a finite number >= 0 (0 = zeros), got {args.init_scale}")
    if not (math.isfinite(args.exit_threshold) and args.exit_threshold > 0):
        raise ValueError(f"--exit-threshold must be a positive number, got {args.exit_threshold}")
    check_out_dir(args.out)
    device = check_device(args.device)
    import torch

    from ..analysis import inspect_sequence
    from ..analysis.report import write_report
    from ..checkpoint import load_config, load_model, resolve_model_dir
    from ..tokenizer import load_tokenizer

    directory = resolve_model_dir(args.model)
    tokenizer = load_tokenizer(directory)
    ids = tokenizer.encode_prompt(args.text)
    if not ids:
        raise ValueError("the text is empty; pass at least one character to inspect")
    if len(ids) > args.max_tokens:
        raise ValueError(f"the text has {len(ids)} tokens, more than --max-tokens {args.max_tokens}; "
                         "shorten it or raise --max-tokens")
    config = load_config(directory)
    if len(ids) > config.context_length:
        raise ValueError(f"the text has {len(ids)} tokens but the model's context is {config.context_length}")
    check_memory(config, len(ids), args, device)
    model = load_model(directory, dtype=torch.float32, device=device)
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


def available_bytes(device: str) -> int | None:
    """Free memory where the arrays will live: the GPU's, or the machine's (MemAvailable)."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(config, seq_len: int, args: argparse.Namespace, device: str) -> None:
    """Refuse, with the figure and the fix, an inspection that cannot fit (rather than let it exhaust
    the machine): path independence holds --samples copies of every token's logits."""
    from ..analysis.inspect import estimate_bytes

    parts = estimate_bytes(config, seq_len, args.steps, args.samples)
    free = available_bytes(device)
    if free is None or sum(parts.values()) <= 0.8 * free:
        return
    budget = 0.8 * free - parts["weights"] - parts["trajectories"]
    per_sample = estimate_bytes(config, seq_len, args.steps, 1)["path_independence"]
    fits = int(budget // per_sample) if budget > 0 else 0
    gib = 2**30
    if fits >= 2:
        fix = f"use --samples {fits} or fewer"
    else:
        fix = "use fewer --steps or a shorter text" if parts["trajectories"] > parts["path_independence"] \
            else "use a shorter text"
    raise ValueError(
        f"--samples {args.samples} x {seq_len} tokens x {args.steps} steps needs about "
        f"{sum(parts.values()) / gib:.1f} GiB on {device} (path independence {parts['path_independence'] / gib:.1f} "
        f"GiB: --samples copies of the vocabulary-{config.vocab_size} logits; trajectories "
        f"{parts['trajectories'] / gib:.1f} GiB), but {free / gib:.1f} GiB is free; {fix}")
