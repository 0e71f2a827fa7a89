"""`latentloop info MODEL`: configuration, parameters by part, and cost per iteration count."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """Show a model's configuration, its parameters by part, and for several iteration
counts the materialized parameters (the unrolled model: each iteration with its own adapter and
core), forward FLOPs per token (2 x the weights a token multiplies with in that unrolled model)
and effective depth.
MODEL is a preset name, a checkpoint directory, 'default' or a hub id. Nothing is allocated:
the counts come from the meta device.

examples:
  latentloop info huginn-0125
  latentloop info small --steps 1 8 32
  latentloop info path/to/checkpoint --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    from . import Formatter

    p = sub.add_parser("info", help="parameters, FLOPs and depth of a model", description=DESCRIPTION,
                       formatter_class=Formatter)
    p.add_argument("model", help="preset name, checkpoint directory, 'default' or hub id")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64], help="iteration counts")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(func=run)


def resolve_config(model: str):
    from pathlib import Path

    from ..checkpoint import CheckpointError, load_config
    from ..config import PRESETS

    if model in PRESETS:
        return PRESETS[model]
    try:
        return load_config(model)
    except CheckpointError:
        if Path(model).expanduser().exists() or len(model.split("/")) == 2:  # a directory, or a hub id
            raise
        raise ValueError(
            f"{model!r} is not a preset and no such directory exists: expected a preset name "
            f"({', '.join(PRESETS)}), a checkpoint directory holding config.json, 'default' or a hub id (org/name)"
        ) from None


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}" if n / scale < 100 else f"{n / scale:.1f}{unit}"
    return str(int(n))


def run(args: argparse.Namespace) -> int:
    from ..accounting import MATERIALIZED_RULE, count_parameters, depth_table

    if any(r < 1 for r in args.steps):
        raise ValueError(f"--steps must all be >= 1, got {args.steps}")
    config = resolve_config(args.model)
    params = count_parameters(config)
    table = depth_table(config, tuple(args.steps))
    if args.json:
        print(json.dumps({"config": config.to_dict(), "parameters": params.as_dict(), "depth": table,
                          "rule": MATERIALIZED_RULE.replace("\n", " ")}, indent=2))
        return 0
    print(f"model: {args.model}")
    for key, value in config.to_dict().items():
        print(f"  {key:<22}{value}")
    print("\nparameters")
    for part, n in params.as_dict().items():
        note = " (tied to embedding)" if part == "head" and config.tie_embeddings else ""
        print(f"  {part:<12}{n:>16,}  {human(n):>8}{note}")
    print(f"\n  {'iterations':>10}  {'materialized params':>20}  {'FLOPs/token':>12}  {'effective depth':>15}")
    for row in table:
        print(f"  {row['num_steps']:>10}  {human(row['materialized_parameters']):>20}  "
              f"{human(row['flops_per_token']):>12}  {row['effective_depth']:>15}")
    print("\n" + "\n".join(f"  {line}" for line in MATERIALIZED_RULE.splitlines()))
    return 0
